"""Ensemble Avg. (Carta et al. 2021, Sec. 5): the average of the experts' output probabilities.

No task label; keeps every expert, so not an ex-model strategy.
"""

from __future__ import annotations

import torch

from exmodel.strategies.base import register_strategy
from exmodel.strategies.ensembles import ExpertEnsemble, global_probabilities


@register_strategy("ensemble_avg")
class EnsembleAvg(ExpertEnsemble):
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return global_probabilities(self.experts, x01).mean(0)
