"""The figures of a SKILL run, drawn from its ``results.json``.

* ``timeline.png``: each agent's tasks as bars over wall-clock time, a tick where a bundle was sent
  to the peers, a cross where an agent was lost.
* ``mapper.png``: per task, the task mapper's accuracy and the accuracy without a task label of the
  population (every agent answers the same when ``identical`` holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from exmodel.reporting.plots import _save

COLORS = matplotlib.colormaps["tab20"].colors


def plot_timeline(results: Mapping[str, Any], path: Path) -> Path:
    n = int(results["agents"])
    fig = Figure(figsize=(9, 1.2 + 0.6 * n))
    ax = fig.add_subplot()
    for e in results["events"]:
        y = n - 1 - e["agent"]
        if e["kind"] == "learned":
            start = max(e["start"], e["end"] - e["seconds"])  # the agent's own time on it, not its queue
            ax.barh(y, e["end"] - start, left=start, color=COLORS[e["task"] % len(COLORS)], edgecolor="black")
            ax.text(start + (e["end"] - start) / 2, y, e["name"], ha="center", va="center", fontsize=6,
                    rotation=90 if e["end"] - start < 0.06 * max(1e-9, results["seconds"]["learning_and_sharing"]) else 0)
            ax.plot([e["end"]], [y + 0.45], marker="v", color="black", markersize=4)
        else:
            ax.plot([e["at"]], [y], marker="x", color="red", markersize=10, mew=2)
    ax.set_yticks(range(n), [f"agent {n - 1 - i}" for i in range(n)])
    ax.set_xlabel("seconds since every agent was ready (▼: bundle sent to all peers, ✕: agent lost)")
    ax.set_title(f"{results['name']}: {n} agent(s) on {results['backend']}, {len(results['tasks'])} tasks")
    fig.tight_layout()
    return _save(fig, path)


def plot_mapper(results: Mapping[str, Any], path: Path) -> Path:
    names = results["tasks"]
    mappers = list(results["accuracy"])
    fig = Figure(figsize=(max(6, 0.6 * len(names)), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, 2 * len(mappers))
    x = np.arange(len(names))
    for i, m in enumerate(mappers):
        r = results["accuracy"][m]
        ax.bar(x + (2 * i) * width, np.array(r["mapper_acc"]) * 100, width, label=f"{m}: task mapper",
               color=COLORS[2 * i])
        ax.bar(x + (2 * i + 1) * width, np.array(r["acc"]) * 100, width, label=f"{m}: accuracy, no task label",
               color=COLORS[2 * i + 1])
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("after sharing: per task")
    fig.tight_layout()
    return _save(fig, path)
