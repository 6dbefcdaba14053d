"""Accuracy after each task, the figure of class-incremental papers (iCaRL Fig. 2, SKD Fig. 5).

After task ``i`` the model is tested on every class seen so far, pooled (not the mean over tasks).
One line per strategy with a ±1 std band over seeds: solid for exemplar-free strategies, dashed for
those that keep real images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from exmodel.errors import ExmodelError
from exmodel.reporting.plots import _save, finish_step_axes


def incremental_curves(results: Mapping[str, Any]) -> list[tuple[str, bool, np.ndarray]]:
    """``(strategy, exemplar_free, per-seed curves (seeds, tasks))`` for strategies that have them."""
    out = []
    for name, entry in (results.get("strategies") or {}).items():
        block = entry.get("accuracy_after_task")
        if isinstance(block, Mapping) and block.get("per_seed"):
            curves = np.array([[np.nan if v is None else float(v) for v in c] for c in block["per_seed"]], dtype=float)
            out.append((str(name), entry.get("exemplar_free") is not False, curves))
    return out


def plot_accuracy_after_task(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    curves = incremental_curves(results)
    if not curves:
        raise ExmodelError(f"results of {results.get('name', 'this run')}: no strategy has accuracy after each task")
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"].colors
    steps = 0
    for k, (name, exemplar_free, per_seed) in enumerate(curves):
        mean = np.nanmean(per_seed, axis=0)
        std = np.nanstd(per_seed, axis=0, ddof=1) if len(per_seed) > 1 else None
        x = np.arange(1, mean.size + 1)
        steps = max(steps, mean.size)
        color = colors[k % len(colors)]
        ax.plot(x, mean * 100, linestyle="-" if exemplar_free else "--", marker="o", markersize=4, color=color,
                label=name if exemplar_free else f"{name} (keeps images)")
        if std is not None:
            ax.fill_between(x, np.clip(mean - std, 0, 1) * 100, np.clip(mean + std, 0, 1) * 100, color=color,
                            alpha=0.15, linewidth=0)
    ax.set_ylim(0, 100)
    finish_step_axes(ax, steps, "tasks learnt (the base task is 1)", "accuracy on all classes seen (%)",
                     f"{results.get('name', '')}: accuracy after each task (solid = exemplar-free)")
    return _save(fig, path)
