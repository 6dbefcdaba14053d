"""``ewc`` and ``online_ewc``: Elastic Weight Consolidation (Kirkpatrick et al. 2017) and its online
form (Schwarz et al. 2018).

After each task the diagonal Fisher information ``F`` of the learner on that task's data is computed
and the weights ``θ*`` are kept. Training on a later task adds ``λ/2 · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²``.
``ewc`` keeps one (F, θ*) pair per task — its state grows with the stream; ``online_ewc`` keeps one
running ``F ← γ·F + F_t`` and the latest ``θ*``.

Defaults: λ = 10⁹ and γ = 1, the Fisher over every training sample of the task — van de Ven & Tolias's
class-incremental Split-MNIST values (their code's ``param_values.py``). In class-incremental learning
no λ lets EWC keep the old classes: it stays near the 20 % of predicting the last task.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.importance import fisher_diagonal, trainable
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner
from exmodel.strategies.cil.losses import quadratic_penalty


class EWCParams(CILParams):
    ewc_lambda: float = Field(1e9, ge=0)  # van de Ven & Tolias's class-incremental Split-MNIST value
    fisher_samples: int | None = Field(None, ge=1)  # None: every training sample of the task


class OnlineEWCParams(EWCParams):
    gamma: float = Field(1.0, ge=0, le=1)  # decay of the running Fisher


@register_strategy("ewc")
class EWC(IncrementalLearner):
    Params = EWCParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # (θ*, F) per task

    def extra_terms(self, model, batch) -> dict[str, torch.Tensor]:
        if not self.anchors:
            return {}
        params = trainable(model)
        total = sum(quadratic_penalty([params[k] for k in f], [a[k] for k in f], f.values()) for a, f in self.anchors)
        return {"ewc": 0.5 * self.params.ewc_lambda * total}

    def fisher(self, data) -> dict[str, torch.Tensor]:
        return fisher_diagonal(self.model, data, max_samples=self.params.fisher_samples, device=self.device,
                               generator=self.generator, logit_mask=self.seen_mask())

    def after_task(self, step: Step, data) -> None:
        theta = {k: v.detach().clone() for k, v in trainable(self.model).items()}
        self.anchors.append((theta, self.fisher(data)))

    def state(self) -> Any:
        return {"model": self.model, "anchors": self.anchors}


@register_strategy("online_ewc")
class OnlineEWC(EWC):
    Params = OnlineEWCParams

    def after_task(self, step: Step, data) -> None:
        theta = {k: v.detach().clone() for k, v in trainable(self.model).items()}
        fisher = self.fisher(data)
        if self.anchors:
            old = self.anchors[0][1]
            fisher = {k: self.params.gamma * old[k] + v for k, v in fisher.items()}
        self.anchors = [(theta, fisher)]
