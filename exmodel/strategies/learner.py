"""A single model over the global label space, for strategies that train one themselves.

It wraps an architecture from the registry with the stream's normalization, so it takes [0, 1]
images like every expert does. In multi-task streams the softmax is restricted to the task's classes
both in training and in prediction, which makes one shared head behave as one head per task.
"""

from __future__ import annotations

import torch
from torch import nn

from exmodel.models import build_model
from exmodel.strategies.base import StreamInfo


class Learner(nn.Module):
    def __init__(self, info: StreamInfo, arch: str, arch_kwargs: dict | None = None) -> None:
        super().__init__()
        c, h, _ = info.input_shape
        self.net = build_model(arch, **{"in_channels": c, "input_size": h, **(arch_kwargs or {}),
                                        "num_classes": info.num_classes})
        self.register_buffer("mean", torch.tensor(info.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info.std).view(1, -1, 1, 1))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net((x01 - self.mean) / self.std)

    def task_mask(self, info: StreamInfo, classes) -> torch.Tensor | None:
        if info.kind != "mt":
            return None
        mask = torch.zeros(info.num_classes, dtype=torch.bool)
        mask[list(classes)] = True
        return mask
