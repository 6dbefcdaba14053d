"""Figures of the class-name experiments (SKILL Sec. 7.2): Fig. 11's learning curves, reused vs random."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from exmodel.reporting.plots import _save


def plot_reuse_curves(fig11: Mapping[str, Any], path: Path) -> Path:
    """Mean test accuracy per epoch over every pair of tasks, each start of reused rows vs a random head."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = range(fig11["epochs"] + 1)
    labels = {"reused": "learned rows, concatenated", "reused_prior": "learned rows (prior tasks' anchors only)",
              "random": "random initialization"}
    for kind, curve in fig11["mean"].items():
        ax.plot(epochs, [100 * a for a in curve], marker="o", label=labels.get(kind, kind),
                linestyle="--" if kind == "random" else "-")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"A new task made of two learned tasks ({len(fig11['pairs'])} pairs)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
