"""Training aids of our ED distillation loop (not in the paper): mixup of buffer samples, an
exponential moving average (EMA) of the student's weights, and the learning-rate schedule (ED's
``fresh`` redraws are the sources' ``redraw``).

* **Mixup** (Zhang et al. 2018) of buffer images across the batch: ``x = λ·x_a + (1 − λ)·x_b`` with
  ``λ ~ Beta(α, α)`` per sample. The teachers are queried on the mixed image itself; the ED target is
  ``λ·target(x, y_a) + (1 − λ)·target(x, y_b)`` (each routed by Eq. 9 with its own label, see
  ``ed_losses.mix_targets``) and the CE label is the same mixture of one-hot vectors. Mixed images of
  two experts' classes are images that neither expert's synthetic data covers: the boundary between
  classes that never met in one training set.
* **EMA** of the student's parameters during one distillation step (BN statistics are the
  student's); the step ends with the averaged weights. Nothing of it is kept between experts.
"""

from __future__ import annotations

import torch
from torch import nn


def mixup_inputs(x: torch.Tensor, alpha: float, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix every sample with a random other one of the batch: returns ``(x_mixed, perm, lam)`` where
    ``x_mixed[i] = lam[i]·x[i] + (1 − lam[i])·x[perm[i]]`` and ``lam ~ Beta(alpha, alpha)`` (B,)."""
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
    return w * x + (1 - w) * x[perm], perm, lam


def soft_labels(y: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class probabilities (B, K) ``lam·onehot(y) + (1 − lam)·onehot(y[perm])``."""
    eye = torch.eye(num_classes, device=y.device)
    lam = lam.view(-1, 1).to(eye.dtype)
    return lam * eye[y] + (1 - lam) * eye[y[perm]]


class WeightEMA:
    """``ema ← decay·ema + (1 − decay)·student`` after every optimiser step; ``copy_to`` writes the
    average into the student's parameters (its BatchNorm statistics stay the student's own)."""

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
