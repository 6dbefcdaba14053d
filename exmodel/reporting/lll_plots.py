"""The figures of an LLL run (SKILL Sec. 6), drawn from its ``results.json``.

* ``task1.png`` (Fig. 4): accuracy on the first task as tasks are learned, per mapper.
* ``normalized.png`` (Fig. 5): accuracy on each of the first tasks divided by its accuracy right after
  it was learned, per mapper.
* ``mapper.png`` (Fig. 6): task-mapper accuracy on all tasks learned so far.
* ``per_task.png`` (Fig. 7): after all tasks, per task: the mappers' accuracy and the head's with a
  task oracle.
* ``average.png`` (Fig. 8): accuracy averaged over the tasks learned so far.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from exmodel.reporting.plots import _save, finish_step_axes

COLORS = matplotlib.colormaps["tab10"].colors


def normalized(acc: list[list[float]], first: int) -> np.ndarray:
    """(first, T): acc on task j after t + 1 tasks divided by acc on j right after learning it (NaN before)."""
    n = len(acc)
    out = np.full((first, n), np.nan)
    for j in range(min(first, n)):
        base = acc[j][j]
        for t in range(j, n):
            out[j, t] = acc[t][j] / base if base > 0 else np.nan
    return out


def _curves(path: Path, title: str, ylabel: str, series: list[tuple[str, list[float], dict]]) -> Path:
    """One line per ``(label, values in [0, 1], plot options)`` over tasks learned 1..T."""
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.subplots()
    steps = max(len(y) for _, y, _ in series)
    for name, y, style in series:
        ax.plot(np.arange(1, len(y) + 1), np.array(y, dtype=float) * 100, label=name, **style)
    ax.set_ylim(0, 100)
    finish_step_axes(ax, steps, "tasks learned", ylabel, title)
    return _save(fig, path)


def plot_lll(results: Mapping[str, Any], out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    mappers: dict[str, Any] = results["mappers"]
    names = [t["name"] for t in results["tasks"]]
    steps = len(names)
    x = np.arange(1, steps + 1)
    label = lambda m: f"{m} (confidence {mappers[m]['confidence']:g})" if mappers[m].get("confidence") else m  # noqa: E731
    paths = []

    line = lambda k: {"marker": "o", "ms": 3, "color": COLORS[k % len(COLORS)]}  # noqa: E731
    oracle = {"color": "grey", "ls": ":"}
    paths.append(_curves(out / "task1.png", f"{results['name']}: accuracy on task 1 ({names[0]}), no task label",
                         "accuracy (%)", [(label(m), [row[0] for row in r["acc"]], line(k))
                                          for k, (m, r) in enumerate(mappers.items())]
                         + [("head with a task oracle", [results["oracle"][0]] * steps, oracle)]))

    first = min(10, steps)
    fig = Figure(figsize=(4 * len(mappers), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(mappers), sharey=True))
    for ax, (m, r) in zip(axes, mappers.items()):
        norm = normalized(r["acc"], first)
        for j in range(first):
            ax.plot(x, norm[j] * 100, color=matplotlib.colormaps["viridis"](j / max(first - 1, 1)), lw=1.2,
                    label=names[j])
        ax.set_title(label(m), fontsize=9)
        ax.set_xlabel("tasks learned")
        ax.set_ylim(0, 110)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("normalized accuracy (%)")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{results['name']}: the first {first} tasks, relative to right after learning each")
    paths.append(_save(fig, out / "normalized.png"))

    paths.append(_curves(out / "mapper.png", f"{results['name']}: task-mapper accuracy on all tasks learned",
                         "tasks mapped right (%)", [(label(m), r["mapper_average"], line(k))
                                                    for k, (m, r) in enumerate(mappers.items())]))

    fig = Figure(figsize=(max(7.5, 0.6 * steps + 2), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / (len(mappers) * 2 + 1)
    pos = np.arange(steps)
    for k, (m, r) in enumerate(mappers.items()):
        ax.bar(pos + (2 * k) * width, np.array(r["mapper_acc"][-1]) * 100, width, color=COLORS[k], alpha=0.45,
               label=f"{m}: mapper")
        ax.bar(pos + (2 * k + 1) * width, np.array(r["acc"][-1]) * 100, width, color=COLORS[k], label=f"{m}: LLL")
    ax.bar(pos + 2 * len(mappers) * width, np.array(results["oracle"]) * 100, width, color="grey",
           label="head, task oracle")
    if results.get("bb"):  # Fig. 7 bottom: the head with beneficial biases, task oracle, as an outline
        ax.bar(pos + 2 * len(mappers) * width, np.array(results["bb"]["oracle"]) * 100, width, fill=False,
               edgecolor="black", label="head + BB, task oracle")
    ax.set_xticks(pos + 0.4 - width / 2, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy after all tasks (%)")
    ax.set_title(f"{results['name']}: per task after learning all {steps}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    paths.append(_save(fig, out / "per_task.png"))

    paths.append(_curves(out / "average.png", f"{results['name']}: accuracy averaged over the tasks learned, "
                         "no task label", "average accuracy (%)",
                         [(label(m), r["average"], line(k)) for k, (m, r) in enumerate(mappers.items())]
                         + [(f"{label(m)} + BB", r["average"], {**line(k), "ls": "--", "marker": "s"})
                            for k, (m, r) in enumerate(((results.get("bb") or {}).get("mappers") or {}).items())]
                         + [("heads with a task oracle", [float(np.mean(results["oracle"][:t])) for t in x], oracle)]))
    return paths
