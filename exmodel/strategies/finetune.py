"""Finetune: naive sequential training on each experience's data (a reference, not ex-model).

It shows how much a single model forgets when it simply keeps training on new data. It uses the
experiences' data, so it is marked ``ex_model: false``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from exmodel.rng import seeded
from exmodel.strategies.base import Params, Step, Strategy, register_strategy
from exmodel.strategies.learner import Learner
from exmodel.training import FitSettings, fit


class FinetuneParams(Params):
    arch: str = "lenet"
    arch_kwargs: dict = Field(default_factory=dict)
    epochs: int = Field(4, ge=1)
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"


@register_strategy("finetune")
class Finetune(Strategy):
    ex_model = False
    consumes = frozenset({"data"})
    Params = FinetuneParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with seeded(self.seed):
            self.model = Learner(self.info, self.params.arch, self.params.arch_kwargs).to(self.device)

    def settings(self) -> FitSettings:
        p = self.params
        return FitSettings(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer)

    def observe(self, step: Step, expert, data, progress=None) -> None:
        last = fit(self.model, data, self.settings(), self.generator,
                   logit_mask=self.model.task_mask(self.info, step.classes), device=self.device, progress=progress,
                   description=f"finetune step {step.index}")
        self.loss_log[step.index] = {"ce": last}  # the last epoch's mean

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        scores = self.model.eval()(x01)
        return self.mask_to_tasks(scores, task_ids) if self.info.kind == "mt" else scores

    def state(self):
        return self.model
