"""Real and pseudo data seen by one model (SKD's Fig. 4): the model's penultimate features of real
test images and of delegator images, projected together on their first two principal components."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from exmodel.fileio import atomic_write_bytes


def pca_2d(*blocks: torch.Tensor) -> list[torch.Tensor]:
    """Every block of features projected on the first two principal components of all of them together."""
    x = torch.cat(blocks).double()
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    out, start = [], 0
    for b in blocks:
        out.append(((x[start:start + len(b)] - mean) @ v[:2].T).float())
        start += len(b)
    return out


def plot_real_vs_pseudo(real: torch.Tensor, real_y: torch.Tensor, pseudo: torch.Tensor, pseudo_y: torch.Tensor,
                        path: str | Path, title: str) -> Path:
    r, p = pca_2d(real, pseudo)
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"].colors
    for k, c in enumerate(sorted(set(real_y.tolist()) | set(pseudo_y.tolist()))):
        color = colors[k % len(colors)]
        ax.scatter(*r[real_y == c].T, s=6, alpha=0.35, color=color, label=f"real {c}")
        ax.scatter(*p[pseudo_y == c].T, s=22, marker="*", color=color, edgecolors="black", linewidths=0.3)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, markerscale=2, loc="best", title="dots: real · stars: pseudo", title_fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())
