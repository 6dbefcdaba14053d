"""The one training loop: every model exmodel trains goes through :func:`train_loop`.

A method supplies two things:

* ``draw() -> Batch``: the next mini-batch (images in [0, 1] and labels), however it samples them (an
  epoch permutation of a dataset, a buffer, a pool, fresh synthetic images);
* ``loss(model, batch) -> {name: term}``: a pure function of the model and the batch. The loop
  minimises the sum of the terms and logs each term separately (:class:`LossLog`).

The loop owns what is common to every method: the optimiser and its learning-rate schedule, the
augmentation (a geometric module, then an optional style jitter), mixup, an exponential moving average
of the weights, and progress. The order of the random draws is fixed (``draw``, augmentation, jitter,
mixup), so one seed gives one model on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from exmodel.progress import Progress

Optimizer = Literal["sgd", "adam", "adamw"]
LRSchedule = Literal["constant", "cosine", "step", "half5"]
OPTIMIZERS: tuple[str, ...] = Optimizer.__args__  # type: ignore[attr-defined]
LR_SCHEDULES: tuple[str, ...] = LRSchedule.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LoopSettings:
    iterations: int
    optimizer: Optimizer = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    # "cosine": decays to 0 over the iterations; "step": ×0.1 at 1/2 and 3/4 of them (the 80/120 of 160
    # epochs of iCaRL/SKD/M²KD schedules)
    lr_schedule: LRSchedule = "constant"
    ema: float = 0.0  # decay of an average of the weights that replaces them at the end; 0: off
    mixup: float = 0.0  # α of Beta(α, α) mixup across the batch (Zhang et al. 2018); 0: off

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.iterations < 0 or not 0 <= self.ema < 1 or self.mixup < 0:
            raise ValueError(f"invalid loop settings: {self}")


def make_optimizer(params, optimizer: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw``; anything else is an error, never a fallback."""
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def make_schedule(opt: torch.optim.Optimizer, schedule: str, iterations: int):
    """The per-iteration learning-rate scheduler of ``schedule`` (None for "constant")."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    if schedule == "step":  # ÷10 at 1/2 and 3/4 (iCaRL, SKD)
        return torch.optim.lr_scheduler.MultiStepLR(opt, [iterations // 2, (3 * iterations) // 4], 0.1)
    if schedule == "half5":  # ÷5 at 1/2 (M²KD: every 40 of 80 epochs)
        return torch.optim.lr_scheduler.MultiStepLR(opt, [iterations // 2], 0.2)
    return None


@dataclass
class Mix:
    """Mixup applied to a batch: ``x[i] = lam[i]·x_a[i] + (1 − lam[i])·x_a[perm[i]]``."""

    perm: torch.Tensor
    lam: torch.Tensor


@dataclass
class Batch:
    x: torch.Tensor  # images in [0, 1], (B, C, H, W); augmented and mixed by the loop before ``loss``
    y: torch.Tensor | None = None  # labels (B,), if the method has any
    mix: Mix | None = None  # set by the loop when it mixes the batch
    extra: dict = field(default_factory=dict)  # whatever else the method's loss needs per batch


@dataclass
class LossLog:
    """Every term of the loss at every iteration, as floats."""

    terms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.terms.setdefault(name, []).append(float(value.detach()))

    def means(self, last: int | None = None) -> dict[str, float]:
        """Each term's mean over the last ``last`` iterations (all of them by default)."""
        window = {k: v[-last:] if last else v for k, v in self.terms.items()}
        return {k: sum(v) / max(1, len(v)) for k, v in window.items()}


class WeightEMA:
    """``ema ← decay·ema + (1 − decay)·weights`` after every optimiser step; ``copy_to`` writes the
    average into the model's parameters (its BatchNorm statistics stay the model's own)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            p.copy_(s)


def mixup_inputs(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, Mix]:
    """Mix every sample with a random other one of the batch, ``lam ~ Beta(alpha, alpha)`` per sample."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    n = len(x)
    a = torch.full((n,), float(alpha))
    # Beta(α, α) as Γ(α)/(Γ(α)+Γ(α)), drawn through the explicit generator for reproducibility.
    g1 = torch._standard_gamma(a, generator=generator)
    g2 = torch._standard_gamma(a, generator=generator)
    lam = (g1 / (g1 + g2).clamp_min(1e-12)).to(x.device)
    perm = torch.randperm(n, generator=generator).to(x.device)
    w = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return w * x + (1 - w) * x[perm], Mix(perm, lam)


class EpochSampler:
    """Mini-batches of indices ``0..n-1``: a fresh permutation from ``generator`` each epoch, cut into
    consecutive batches (the last one smaller)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"an epoch needs samples and a batch size ≥ 1, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.steps_per_epoch = (n + batch_size - 1) // batch_size
        self._queue: list[torch.Tensor] = []

    def __call__(self) -> torch.Tensor:
        if not self._queue:  # a new epoch
            perm = torch.randperm(self.n, generator=self.generator)
            self._queue.extend(perm[b * self.batch_size:(b + 1) * self.batch_size] for b in range(self.steps_per_epoch))
        return self._queue.pop(0)


def train_loop(model: nn.Module, draw: Callable[[], Batch], loss: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
               settings: LoopSettings, generator: torch.Generator, *, augment: nn.Module | None = None,
               jitter: nn.Module | None = None, progress: Progress | None = None,
               description: str = "training", after_step: Callable[[nn.Module], None] | None = None) -> LossLog:
    """Train ``model`` in place for ``settings.iterations`` steps and leave it in eval mode.

    ``after_step(model)`` runs after every optimiser step, with the step's gradients still in place
    (what path-integral importances such as SI's accumulate)."""
    model.train()
    opt = make_optimizer(model.parameters(), settings.optimizer, settings.lr, settings.momentum, settings.weight_decay)
    sched = make_schedule(opt, settings.lr_schedule, settings.iterations)
    ema = WeightEMA(model, settings.ema) if settings.ema else None
    log = LossLog()
    task = progress.add(description, total=settings.iterations) if progress is not None else None
    for _ in range(settings.iterations):
        batch = draw()
        if augment is not None:
            with torch.no_grad():
                batch.x = augment(batch.x)
        if jitter is not None:
            batch.x = jitter(batch.x)
        if settings.mixup:
            batch.x, batch.mix = mixup_inputs(batch.x, settings.mixup, generator)
        terms = loss(model, batch)
        total = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if after_step is not None:
            after_step(model)
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update(model)
        log.add(terms)
        if task is not None:
            progress.advance(task)
    if ema is not None:
        ema.copy_to(model)
    if task is not None:
        progress.remove(task)
    model.eval()
    return log
