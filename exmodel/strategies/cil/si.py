"""``si``: Synaptic Intelligence (Zenke, Poole & Ganguli 2017).

While a task trains, each parameter's contribution to the drop in loss is accumulated along the
optimisation path, ``ω += −g·Δθ`` after every step; at the end of the task ``Ω += ω / (Δθ_task² + ξ)``
and later tasks pay ``c · Σ Ω (θ − θ*)²``. Defaults: ``ξ = 0.1`` and ``c = 5,000``, van de Ven &
Tolias's class-incremental Split-MNIST values (their code's ``param_values.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.importance import PathIntegral, trainable
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner
from exmodel.strategies.cil.losses import quadratic_penalty


class SIParams(CILParams):
    si_c: float = Field(5000.0, ge=0)  # van de Ven & Tolias's class-incremental Split-MNIST value
    damping: float = Field(0.1, gt=0)  # ξ


@register_strategy("si")
class SI(IncrementalLearner):
    Params = SIParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.path = PathIntegral(self.model, self.params.damping)
        self.anchor: dict[str, torch.Tensor] | None = None

    def before_task(self, step: Step, data) -> None:
        self.path.start(self.model)

    def after_step(self, model) -> None:
        self.path.step(model)

    def extra_terms(self, model, batch) -> dict[str, torch.Tensor]:
        if self.anchor is None:
            return {}
        params = trainable(model)
        omega = self.path.omega
        return {"si": self.params.si_c * quadratic_penalty([params[k] for k in omega], [self.anchor[k] for k in omega],
                                                           omega.values())}

    def after_task(self, step: Step, data) -> None:
        self.path.finish(self.model)
        self.anchor = {k: v.detach().clone() for k, v in trainable(self.model).items()}

    def state(self) -> Any:
        return {"model": self.model, "omega": self.path.omega, "anchor": self.anchor}
