"""``mas``: Memory Aware Synapses (Aljundi et al. 2018).

After each task, the importance of every parameter is how much a small change of it moves the
learner's outputs: ``Ω = mean_x |∂‖f(x)‖²₂ / ∂θ|`` over the task's data, with no labels (Eq. 4). The
importances accumulate over tasks and later tasks pay ``λ · Σ Ω (θ − θ*)²`` (Eq. 3; λ = 1 in the
paper and our default).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.importance import output_sensitivity, trainable
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner
from exmodel.strategies.cil.losses import quadratic_penalty


class MASParams(CILParams):
    mas_lambda: float = Field(1.0, ge=0)
    importance_samples: int | None = Field(None, ge=1)  # None: every training sample of the task


@register_strategy("mas")
class MAS(IncrementalLearner):
    Params = MASParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.omega: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    def extra_terms(self, model, batch) -> dict[str, torch.Tensor]:
        if self.omega is None or self.anchor is None:
            return {}
        params = trainable(model)
        keys = list(self.omega)
        return {"mas": self.params.mas_lambda * quadratic_penalty([params[k] for k in keys],
                                                                  [self.anchor[k] for k in keys],
                                                                  [self.omega[k] for k in keys])}

    def after_task(self, step: Step, data) -> None:
        new = output_sensitivity(self.model, data, max_samples=self.params.importance_samples, device=self.device,
                                 generator=self.generator, logit_mask=self.seen_mask())
        self.omega = new if self.omega is None else {k: self.omega[k] + v for k, v in new.items()}
        self.anchor = {k: v.detach().clone() for k, v in trainable(self.model).items()}

    def state(self) -> Any:
        return {"model": self.model, "omega": self.omega, "anchor": self.anchor}
