"""Shared pieces of the ensemble baselines: every expert's output mapped to the global label space."""

from __future__ import annotations

import torch

from exmodel.experts.expert import Expert


@torch.no_grad()
def global_probabilities(experts: list[Expert], x01: torch.Tensor) -> torch.Tensor:
    """(E, B, K) softmax of each expert, zero outside the expert's output classes."""
    return torch.stack([e.global_logits(x01, fill=float("-inf")).softmax(dim=1) for e in experts])


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats; 0·log 0 is taken as 0."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim)
