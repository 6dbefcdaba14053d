"""Ensemble Avg. (Carta et al. 2021, Sec. 5): the average of the experts' output probabilities.

No task label; keeps every expert, so not an ex-model strategy.
"""

from __future__ import annotations

import torch

from exmodel.strategies.base import Step, Strategy, register_strategy
from exmodel.strategies.ensembles import global_probabilities


@register_strategy("ensemble_avg")
class EnsembleAvg(Strategy):
    ex_model = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.experts: list = []

    def observe(self, step: Step, expert, data, progress=None) -> None:
        self.experts.append(expert.to(self.device).eval())

    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return global_probabilities(self.experts, x01).mean(0)

    def state(self):
        return self.experts
