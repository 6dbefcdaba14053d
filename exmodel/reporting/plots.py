"""Figures of a finished run: accuracy matrices and accuracy along the stream.

The accuracy matrix ``R[i, j]`` is the accuracy on the test set of experience ``j`` after training
step ``i`` (lower triangle filled; experiences not yet seen are null in ``results.json``). Two views:

* :func:`plot_accuracy_matrices`: one heatmap per strategy on a shared 0-100 % colour scale, so
  forgetting shows as a colour change down a column;
* :func:`plot_stream_accuracy`: after each step ``i``, the mean accuracy on the experiences seen so
  far (mean of ``R[i, j]`` for ``j <= i``), with a ±1 std band over seeds. Ex-model strategies (which
  only see the experts) are solid lines, the data-based references dashed.

We draw on a bare :class:`matplotlib.figure.Figure` with the Agg canvas rather than through
``pyplot``: no global figure registry (nothing to close, nothing leaks between calls), no GUI
backend, safe in worker threads. PNG bytes go through :func:`exmodel.fileio.atomic_write_bytes`, so
a figure is never half-written under its final name.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from exmodel.errors import ExmodelError
from exmodel.evaluation.metrics import mean_std
from exmodel.fileio import atomic_write_bytes

DPI = 120
MAX_ANNOTATED_STEPS = 10  # beyond 10x10 cells the percentages no longer fit in a readable font
MAX_COLUMNS = 3  # heatmaps per row in the grid


def _as_matrix(matrix: Any) -> np.ndarray | None:
    # null (JSON's stand-in for NaN) -> NaN; None when there is no usable square matrix.
    if not isinstance(matrix, list) or not matrix:
        return None
    try:
        array = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 2 and array.shape[0] == array.shape[1] else None


def seen_accuracy_curve(matrix: np.ndarray) -> np.ndarray:
    """``c[i] = mean(R[i, j] for j <= i)`` ignoring NaN; NaN where step ``i`` has no value."""
    curve = np.full(matrix.shape[0], np.nan)
    for i in range(matrix.shape[0]):
        seen = matrix[i, : i + 1]
        seen = seen[~np.isnan(seen)]
        if seen.size:
            curve[i] = float(seen.mean())
    return curve


def _matrix_panels(results: Mapping[str, Any], matrix_key: str) -> list[tuple[str, bool, dict[str, Any]]]:
    panels = []
    for name, entry in (results.get("strategies") or {}).items():
        block = entry.get(matrix_key)
        if isinstance(block, Mapping) and (_as_matrix(block.get("mean")) is not None or block.get("per_seed")):
            panels.append((str(name), bool(entry.get("ex_model")), dict(block)))
    if not panels:
        raise ExmodelError(f"results of {results.get('name', 'this run')}: no strategy has a '{matrix_key}' to plot")
    return panels


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy_matrices(
    results: Mapping[str, Any], path: str | os.PathLike, matrix_key: str = "accuracy_matrix"
) -> Path:
    """A grid of heatmaps of the mean accuracy matrix (in %), one per strategy, shared 0-100 scale."""
    panels = []
    for name, ex_model, block in _matrix_panels(results, matrix_key):
        mean = _as_matrix(block.get("mean"))
        if mean is not None:
            panels.append((name, ex_model, mean * 100.0))
    if not panels:
        raise ExmodelError(f"results of {results.get('name', 'this run')}: no mean '{matrix_key}' to plot")
    steps = max(p[2].shape[0] for p in panels)
    ncols = min(len(panels), MAX_COLUMNS)
    nrows = math.ceil(len(panels) / ncols)
    side = max(2.8, 0.5 * steps + 1.3)  # inches per heatmap: ~0.5 in per cell leaves room for "99.9"
    fig = Figure(figsize=(ncols * side + 1.2, nrows * side + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")  # unseen cells in light grey
    image = None
    for ax, (name, ex_model, matrix) in zip(axes.flat, panels):
        size = matrix.shape[0]
        image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=100.0, cmap=cmap)
        if size <= MAX_ANNOTATED_STEPS:
            for (i, j), value in np.ndenumerate(matrix):
                if not np.isnan(value):
                    # viridis is dark below ~60 %: white text there, black above.
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8 if size <= 6 else 6,
                            color="white" if value < 60 else "black")
        ax.set_xticks(range(size), [str(k + 1) for k in range(size)])
        ax.set_yticks(range(size), [str(k + 1) for k in range(size)])
        ax.set_xlabel("test experience j")
        ax.set_ylabel("after training step i")
        ax.set_title(f"{name} ({'ex-model' if ex_model else 'not ex-model'})", fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.8)
    label = "task-aware accuracy" if matrix_key.startswith("task_aware") else "accuracy"
    fig.suptitle(f"{results.get('name', '')} ({results.get('scenario', '')}): mean {label} over seeds")
    return _save(fig, path)


def seen_accuracy_over_seeds(
    block: Mapping[str, Any], where: str = "accuracy matrix"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and sample std over seeds of :func:`seen_accuracy_curve`, from ``block["per_seed"]``.

    Without per-seed matrices: the curve of the mean matrix and ``None`` for the std (no band).
    """
    per_seed = [m for m in (_as_matrix(x) for x in block.get("per_seed") or []) if m is not None]
    if len({m.shape for m in per_seed}) > 1:
        raise ExmodelError(f"{where}: per-seed matrices have different sizes {sorted({m.shape for m in per_seed})}")
    if per_seed:
        curves = np.stack([seen_accuracy_curve(m) for m in per_seed])  # (seeds, steps)
        mean = np.full(curves.shape[1], np.nan)
        std = np.zeros(curves.shape[1])
        for i, column in enumerate(curves.T):
            stat = mean_std(column.tolist(), skip_missing=True)  # sample std, as in the tables
            if stat["mean"] is not None:
                mean[i], std[i] = stat["mean"], stat["std"]
        return mean, std
    mean_matrix = _as_matrix(block.get("mean"))
    if mean_matrix is None:
        raise ExmodelError(f"{where}: neither a usable mean nor per-seed matrices")
    return seen_accuracy_curve(mean_matrix), None


def plot_stream_accuracy(
    results: Mapping[str, Any], path: str | os.PathLike, matrix_key: str = "accuracy_matrix"
) -> Path:
    """Accuracy on the experiences seen so far after each step, per strategy, ±1 std over seeds."""
    panels = _matrix_panels(results, matrix_key)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    steps = 0
    colors = matplotlib.colormaps["tab10"].colors
    for k, (name, ex_model, block) in enumerate(panels):
        mean, std = seen_accuracy_over_seeds(block, f"strategy {name!r} {matrix_key}")
        x = np.arange(1, mean.size + 1)
        steps = max(steps, mean.size)
        color = colors[k % len(colors)]
        ax.plot(x, mean * 100.0, linestyle="-" if ex_model else "--", marker="o", markersize=4,
                color=color, label=f"{name}{'' if ex_model else ' (not ex-model)'}")
        if std is not None:
            low, high = np.clip(mean - std, 0.0, 1.0), np.clip(mean + std, 0.0, 1.0)  # accuracies stay in [0, 1]
            ax.fill_between(x, low * 100.0, high * 100.0, color=color, alpha=0.15, linewidth=0)
    ax.set_ylim(0.0, 100.0)
    label = "task-aware accuracy" if matrix_key.startswith("task_aware") else "accuracy"
    finish_step_axes(ax, steps, "training step (experiences seen)", f"mean {label} on seen experiences (%)",
                     f"{results.get('name', '')} ({results.get('scenario', '')}): solid = ex-model, dashed = not ex-model")
    return _save(fig, path)


def finish_step_axes(ax: Any, steps: int, xlabel: str, ylabel: str, title: str) -> None:
    """The frame shared by the per-step line plots: steps 1..``steps`` on x, grid, legend on the right."""
    ax.set_xticks(range(1, steps + 1))
    ax.set_xlim(0.8, steps + 0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
