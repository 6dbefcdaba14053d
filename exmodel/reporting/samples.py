"""A grid of images per class (the paper's Fig. 2: what each knowledge source puts in the buffer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from exmodel.fileio import atomic_write_bytes


def sample_grid(x01: torch.Tensor, labels: torch.Tensor, per_class: int = 8) -> tuple[np.ndarray, list[int]]:
    """(rows = classes present, cols = up to ``per_class`` images) as one (H·rows, W·cols, C) array."""
    classes = sorted(set(labels.tolist()))
    c, h, w = x01.shape[1:]
    grid = np.ones((len(classes) * h, per_class * w, c), dtype=np.float32)
    for r, cls in enumerate(classes):
        imgs = x01[labels == cls][:per_class].clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        for j, img in enumerate(imgs):
            grid[r * h:(r + 1) * h, j * w:(j + 1) * w] = img
    return grid, classes


def plot_sample_grids(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path, per_class: int = 8,
                      class_names: list[str] | None = None) -> Path:
    """One panel per knowledge source: rows are classes, columns samples."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    fig = Figure(figsize=(2.2 + 1.0 * per_class * 0.45 * n, 0.5 + 0.45 * 10))
    FigureCanvasAgg(fig)
    for i, (title, (x, y)) in enumerate(panels.items()):
        ax = fig.add_subplot(1, n, i + 1)
        grid, classes = sample_grid(x, y, per_class)
        h = x.shape[2]
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([(r + 0.5) * h for r in range(len(classes))])
        ax.set_yticklabels([class_names[c] if class_names else str(c) for c in classes], fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
