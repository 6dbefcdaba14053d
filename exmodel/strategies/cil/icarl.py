"""``icarl``: incremental classifier and representation learning (Rebuffi et al. 2017).

* **Representation** (Alg. 3): each task trains on the new data together with the kept exemplars,
  with LwF-MC's sigmoid loss — one-hot targets for the new classes, the previous model's sigmoid
  outputs for the old ones.
* **Exemplars** (Alg. 4-5): after the task, every class keeps ``M // classes`` images chosen by
  herding on the L2-normalised features; older classes drop their last ones.
* **Classifier** (Alg. 1): nearest mean of exemplars — the class means of the exemplars' normalised
  features, recomputed with the current network after every task.

Default budget M = 2,000 (the paper's and van de Ven et al.'s).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.er import ER, ReplayParams
from exmodel.strategies.cil.lwf_mc import SigmoidDistillation, SigmoidDistillationParams
from exmodel.strategies.cil.memory import herding_selection
from exmodel.strategies.joint import concat


@register_strategy("icarl")
class ICaRL(SigmoidDistillation, ER):
    Params = type("ICaRLParams", (ReplayParams, SigmoidDistillationParams), {})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.class_means = torch.zeros(self.info.num_classes, self.model.net.num_features, device=self.device)

    def training_set(self, data):
        kept = self.memory.as_dataset(data)
        if kept is None:
            return data
        return concat([data, kept])

    def replay(self, batch_size: int):
        return None  # the exemplars are part of the training set

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = [self.model.forward_features(images[i:i + 500].float().div(255).to(self.device))
               for i in range(0, len(images), 500)]
        return torch.cat(out)

    def select(self, images, step: Step, m: int):
        return herding_selection(self.features(images), m)

    def after_task(self, step: Step, data) -> None:
        super().after_task(step, data)  # herding exemplars for the new classes, old ones cut to M/classes
        for c, images in self.memory.images.items():
            mean = F.normalize(self.features(images), dim=1).mean(0)
            self.class_means[c] = F.normalize(mean, dim=0)
        self.keep_old_model()

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self.model.eval().forward_features(x01), dim=1)
        scores = -torch.cdist(f, self.class_means)  # nearest mean of exemplars
        return scores.masked_fill(~self.seen_mask(), float("-inf"))

    def state(self) -> Any:
        return {"model": self.model, "old_model": self.old_model, "exemplars": self.memory.state(),
                "class_means": self.class_means}
