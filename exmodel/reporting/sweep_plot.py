"""Figure: stream accuracy against the buffer size (the paper's Fig. 3, left), one line per strategy.

``sweep`` is what ``benchmarks/buffer_sweep.py`` writes: ``{"sizes": [N, ...], "strategies": {name:
{"ex_model": bool, "stream_accuracy": {"mean": [...], "std": [...]}}}}`` with one entry per size
(None where a size was not run). The x axis is logarithmic, as in the paper; bands are ±1 std over
seeds; data-based strategies (replay) are dashed, ex-model ones solid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from exmodel.errors import ExmodelError
from exmodel.reporting.plots import _save


def plot_buffer_sweep(sweep: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    sizes = np.asarray(sweep.get("sizes") or [], dtype=float)
    lines = sweep.get("strategies") or {}
    if sizes.size == 0 or not lines:
        raise ExmodelError("buffer sweep: nothing to plot (no sizes or no strategies)")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for name, entry in lines.items():
        acc = entry["stream_accuracy"]
        mean = 100 * np.array([np.nan if v is None else v for v in acc["mean"]], dtype=float)
        std = 100 * np.array([np.nan if v is None else v for v in acc["std"]], dtype=float)
        style = "-" if entry.get("ex_model", True) else "--"
        (line,) = ax.plot(sizes, mean, style, marker="o", label=name)
        ax.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("buffer size N (images)")
    ax.set_ylabel("stream accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Stream accuracy against buffer size")
    fig.tight_layout()
    return _save(fig, path)
