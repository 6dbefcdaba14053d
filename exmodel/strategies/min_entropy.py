"""Min. Entropy (Carta et al. 2021, Sec. 5): per sample, trust the most confident expert.

j* = argmin_j H(p^j(x)) with H(p) = -Σ_i p_i log p_i; the output is p^{j*}(x). No task label; keeps
every expert, so not an ex-model strategy.
"""

from __future__ import annotations

import torch

from exmodel.strategies.base import register_strategy
from exmodel.strategies.ensembles import ExpertEnsemble, entropy, global_probabilities


def min_entropy_select(probs: torch.Tensor) -> torch.Tensor:
    """probs (E, B, K) -> (B, K): each sample's distribution from its lowest-entropy expert."""
    best = entropy(probs, dim=2).argmin(0)  # (B,)
    return probs[best, torch.arange(probs.shape[1])]


@register_strategy("min_entropy")
class MinEntropy(ExpertEnsemble):
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return min_entropy_select(global_probabilities(self.experts, x01))
