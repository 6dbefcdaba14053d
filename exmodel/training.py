"""The one supervised training loop (experts, fine-tuning, joint training).

It trains ``model(x01) -> logits`` with cross-entropy on an :class:`ImageDataset` whose labels are
mapped to output indices by ``label_map`` (global class id -> output unit). An optional
``logit_mask`` restricts the softmax to some output units (the "labels trick" that makes a single head
behave as a task's own head in multi-task streams). Mini-batch order comes from an explicit generator,
so the same seed gives the same model on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from exmodel.data.types import ImageDataset
from exmodel.progress import Progress


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    weight_decay: float = 0.0


def make_optimizer(params, s: FitSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def label_index(labels: torch.Tensor, label_map: dict[int, int] | None) -> torch.Tensor:
    if label_map is None:
        return labels
    lut = torch.full((int(labels.max()) + 1 if len(labels) else 1,), -1, dtype=torch.long)
    for g, o in label_map.items():
        if g < len(lut):
            lut[g] = o
    out = lut[labels]
    if (out < 0).any():
        raise ValueError("label_map does not cover every label of the dataset")
    return out


def fit(model: nn.Module, data: ImageDataset, settings: FitSettings, generator: torch.Generator, *,
        label_map: dict[int, int] | None = None, logit_mask: torch.Tensor | None = None,
        device: str = "cpu", progress: Progress | None = None, description: str = "training") -> float:
    """Train ``model`` in place; returns the mean loss of the last epoch."""
    model.to(device).train()
    opt = make_optimizer(model.parameters(), settings)
    targets = label_index(data.labels, label_map)
    n = len(data)
    steps_per_epoch = (n + settings.batch_size - 1) // settings.batch_size
    task = progress.add(description, total=settings.epochs * steps_per_epoch) if progress else None
    last = float("nan")
    for _ in range(settings.epochs):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * settings.batch_size:(b + 1) * settings.batch_size]
            x = data.float_images(idx).to(device)
            y = targets[idx].to(device)
            logits = model(x)
            if logit_mask is not None:
                logits = logits.masked_fill(~logit_mask.to(device), float("-inf"))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            if task is not None:
                progress.advance(task)
        last = total / n
    if task is not None:
        progress.remove(task)
    model.eval()
    return last


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageDataset, batch_size: int = 1000, device: str = "cpu") -> torch.Tensor:
    model.eval()
    outs = [model(data.float_images(slice(i, i + batch_size)).to(device)).cpu() for i in range(0, len(data), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
