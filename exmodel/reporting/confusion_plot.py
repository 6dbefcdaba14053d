"""Confusion matrices of the final models, one panel per strategy (M²KD's Fig. 6).

Rows are the true classes, columns the predicted ones, each row in % of that class's test images
(summed over seeds before normalising). A class-incremental learner biased towards the classes it
learnt last shows it as bright columns on the right.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from exmodel.reporting.plots import _save


def row_percentages(counts: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix of counts as % of its sum (0 for an empty row)."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(100.0 * counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_panels(results: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    return [(str(name), row_percentages(entry["confusion_matrix"]))
            for name, entry in (results.get("strategies") or {}).items() if entry.get("confusion_matrix") is not None]


def plot_confusion_matrices(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    panels = confusion_panels(results)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.2 * cols + 0.8, 3.0 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for ax, (name, pct) in zip(axes, panels):
        image = ax.imshow(pct, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ticks = range(0, pct.shape[0], max(1, pct.shape[0] // 10))
        ax.set_xticks(list(ticks))
        ax.set_yticks(list(ticks))
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="% of the true class")
    fig.suptitle(f"{results.get('name', '')}: confusion of the final models", fontsize=10)
    return _save(fig, path)
