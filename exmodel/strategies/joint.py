"""Joint (cumulative) training: the data upper bound.

At step i a fresh model is trained on the union of the data of experiences 0..i, so after the last
step it is the ordinary offline model trained on everything. It keeps all the data (not ex-model).
In multi-task streams it has one head over all classes and predicts within the given task's classes.
"""

from __future__ import annotations

import torch

from exmodel.data.types import ImageDataset
from exmodel.rng import seeded
from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.finetune import Finetune, FinetuneParams
from exmodel.strategies.learner import Learner
from exmodel.training import fit


def concat(datasets: list[ImageDataset]) -> ImageDataset:
    first = datasets[0]
    return ImageDataset(torch.cat([d.images for d in datasets]), torch.cat([d.labels for d in datasets]),
                        first.class_names, first.name, first.mean, first.std)


@register_strategy("joint")
class Joint(Finetune):
    Params = FinetuneParams
    exemplar_free = False  # keeps every step's data: the upper bound

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[ImageDataset] = []

    def observe(self, step: Step, expert, data, progress=None) -> None:
        self.seen.append(data)
        with seeded(self.seed + step.index):
            self.model = Learner(self.info, self.params.arch, self.params.arch_kwargs).to(self.device)
        last = fit(self.model, concat(self.seen), self.settings(), self.generator, device=self.device,
                   progress=progress, description=f"joint step {step.index}")
        self.loss_log[step.index] = {"ce": last}  # the last epoch's mean

    def state(self):
        return {"model": self.model, "data": self.seen}
