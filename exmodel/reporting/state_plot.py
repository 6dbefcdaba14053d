"""Figure: the state a strategy keeps between experts, after each step of the stream.

An ex-model strategy may keep one model and a fixed-size buffer, nothing that grows with the number
of experts; the ensembles keep every expert. Every cell records ``state_bytes_per_step`` (the bytes
kept after each step, see :mod:`exmodel.evaluation.costs`); this plot draws their mean over seeds,
one line per strategy — flat lines are state that does not grow, slanted ones state that does.
Ex-model strategies are solid, the others dashed, as in :mod:`exmodel.reporting.plots`.
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

MB = 1e6
MARKERS = "osD^vP"


def state_curves(results: Mapping[str, Any]) -> dict[str, tuple[bool, np.ndarray]]:
    """Per strategy with ``state_bytes_per_step``: (ex-model?, mean bytes kept after each step over seeds).

    Strategies without the record (results written before it existed) are left out; seeds whose
    streams have different lengths are a user error, since the steps would not line up.
    """
    curves = {}
    for name, entry in (results.get("strategies") or {}).items():
        per_seed = entry.get("state_bytes_per_step")
        if not per_seed:
            continue
        if len({len(s) for s in per_seed}) != 1:
            raise ExmodelError(f"strategy {name!r}: state_bytes_per_step has seeds of different lengths "
                               f"{sorted({len(s) for s in per_seed})}")
        values = np.array([[np.nan if v is None else float(v) for v in s] for s in per_seed], dtype=float)
        if np.isnan(values).all():
            continue
        curves[str(name)] = (bool(entry.get("ex_model")), np.nanmean(values, axis=0))
    return curves


def plot_state_kept(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bytes kept between experts (MB) after each step, one line per strategy, mean over seeds."""
    curves = state_curves(results)
    if not curves:
        raise ExmodelError(f"results of {results.get('name', 'this run')}: no strategy has a "
                           "'state_bytes_per_step' to plot")
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"].colors
    steps, n = 0, len(curves)
    for k, (name, (ex_model, curve)) in enumerate(curves.items()):
        x = np.arange(1, curve.size + 1)
        steps = max(steps, curve.size)
        # Strategies often keep exactly the same bytes (every ensemble keeps all experts): earlier lines
        # are drawn wider and with larger markers of another shape, so the ones on top do not hide them.
        ax.plot(x, curve / MB, linestyle="-" if ex_model else "--", marker=MARKERS[k % len(MARKERS)],
                markersize=4 + 4 * (n - 1 - k) / max(1, n - 1), linewidth=1.2 + 3 * (n - 1 - k) / max(1, n - 1),
                color=colors[k % len(colors)], label=f"{name}{'' if ex_model else ' (not ex-model)'}")
    ax.set_ylim(bottom=0.0)
    finish_step_axes(ax, steps, "training step (experts seen)", "state kept between experts (MB)",
                     f"{results.get('name', '')} ({results.get('scenario', '')}): flat = does not grow with the stream")
    return _save(fig, path)
