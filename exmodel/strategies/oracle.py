"""Oracle (Carta et al. 2021, Sec. 5): the ensemble of all experts, routed by the task label.

Each test sample goes to the expert of its experience, and the prediction is restricted to that
experience's classes. It keeps every expert (state grows with the stream) and needs task labels, so
it is not an ex-model strategy; it is the upper bound of what the experts know. Samples of a task
whose expert has not arrived yet get the average of the seen experts' probabilities.
"""

from __future__ import annotations

import torch

from exmodel.strategies.base import register_strategy
from exmodel.strategies.ensembles import ExpertEnsemble, global_probabilities


@register_strategy("oracle")
class Oracle(ExpertEnsemble):
    @torch.no_grad()
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(x01), self.info.num_classes), float("-inf"), device=x01.device)
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().squeeze(1)
            if t >= len(self.experts):  # no expert for this task yet: fall back on the seen experts' average
                out[rows] = global_probabilities(self.experts, x01[rows]).mean(0).log()
                continue
            logits = self.experts[t].global_logits(x01[rows], fill=float("-inf"))
            keep = torch.full_like(logits, float("-inf"))
            cls = list(self.classes[t])
            keep[:, cls] = logits[:, cls]
            out[rows] = keep
        return out
