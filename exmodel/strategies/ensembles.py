"""Shared pieces of the ensemble baselines: they keep every expert (so their state grows with the
stream and they are not ex-model strategies) and combine the experts' outputs in the global label space."""

from __future__ import annotations

import torch

from exmodel.experts.expert import Expert
from exmodel.strategies.base import Step, Strategy


class ExpertEnsemble(Strategy):
    """Keeps every expert it observes; subclasses say how to combine them in ``predict``."""

    ex_model = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.experts: list[Expert] = []
        self.classes: list[tuple[int, ...]] = []

    def observe(self, step: Step, expert: Expert, data, progress=None) -> None:
        self.experts.append(expert.to(self.device).eval())
        self.classes.append(step.classes)

    def state(self):
        return self.experts


@torch.no_grad()
def global_probabilities(experts: list[Expert], x01: torch.Tensor) -> torch.Tensor:
    """(E, B, K) softmax of each expert, zero outside the expert's output classes."""
    return torch.stack([e.global_logits(x01, fill=float("-inf")).softmax(dim=1) for e in experts])


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats; 0·log 0 is taken as 0."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim)
