"""Supervised training on a dataset (experts, fine-tuning, joint training), through the one loop.

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

from exmodel import loop
from exmodel.data.types import ImageDataset
from exmodel.loop import train_loop
from exmodel.progress import Progress


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9
    weight_decay: float = 0.0


def make_optimizer(params, s: FitSettings) -> torch.optim.Optimizer:
    return loop.make_optimizer(params, s.optimizer, s.lr, s.momentum, s.weight_decay)


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
    """Train ``model`` in place (epochs of a random permutation, through :func:`exmodel.loop.train_loop`);
    returns the mean loss of the last epoch."""
    model.to(device)
    targets = label_index(data.labels, label_map)
    n, size = len(data), settings.batch_size
    if not n:
        model.eval()
        return float("nan")
    sampler = loop.EpochSampler(n, size, generator)
    steps_per_epoch = sampler.steps_per_epoch

    def draw() -> loop.Batch:
        idx = sampler()
        return loop.Batch(data.float_images(idx).to(device), targets[idx].to(device))

    def cross_entropy(m: nn.Module, batch: loop.Batch) -> dict[str, torch.Tensor]:
        logits = m(batch.x)
        if logit_mask is not None:
            logits = logits.masked_fill(~logit_mask.to(device), float("-inf"))
        return {"ce": F.cross_entropy(logits, batch.y)}

    run = loop.LoopSettings(iterations=settings.epochs * steps_per_epoch, optimizer=settings.optimizer,
                            lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    log = train_loop(model, draw, cross_entropy, run, generator, progress=progress, description=description)
    if not settings.epochs:
        return float("nan")
    sizes = [min(size, n - b * size) for b in range(steps_per_epoch)]
    return sum(v * k for v, k in zip(log.terms["ce"][-steps_per_epoch:], sizes)) / n


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageDataset, batch_size: int = 1000, device: str = "cpu") -> torch.Tensor:
    model.eval()
    outs = [model(data.float_images(slice(i, i + batch_size)).to(device)).cpu() for i in range(0, len(data), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
