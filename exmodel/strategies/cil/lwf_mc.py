"""``lwf_mc``: Learning without Forgetting in its multi-class form (Li & Hoiem 2017; the "LwF.MC" of
iCaRL, Rebuffi et al. 2017, Sec. 4; Eq. 1 of the M²KD paper).

Every class seen so far has a sigmoid unit. On a new task's data the new classes' units learn the
one-hot labels, and the old classes' units learn to output what the previous model (frozen at the end
of the last task) outputs — the old model's knowledge is distilled through the new data alone.
:class:`SigmoidDistillation` is that loss and its frozen teacher; iCaRL trains with it too.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from exmodel import loop
from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner
from exmodel.strategies.cil.losses import lwf_mc_loss


class SigmoidDistillationParams(CILParams):
    # the old units' targets are sigmoid(old logit / T): T = 1 in iCaRL's paper (Rebuffi et al. 2017),
    # T = 2 in van de Ven et al.'s code (their `--temp`, default 2), whose Split-MNIST figures we compare with
    distill_temperature: float = Field(1.0, gt=0)
    # the BCE summed over the seen units (default), or averaged over them as iCaRL's and M²KD's code
    # average it — what their SGD learning rate of 2.0 is meant for
    average_units: bool = False


class SigmoidDistillation:
    """Mixin for an :class:`IncrementalLearner`: LwF-MC's loss against the model frozen by
    :meth:`keep_old_model` at the end of the previous task."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.old_model: nn.Module | None = None
        self.old_classes: list[int] = []

    def before_task(self, step: Step, data) -> None:
        self.old_classes = [c for c in self.seen if c not in step.classes]

    def loss(self, model: nn.Module, batch: loop.Batch) -> dict[str, torch.Tensor]:
        old = None
        if self.old_model is not None:
            with torch.no_grad():
                old = self.old_model(batch.x)
        bce = lwf_mc_loss(model(batch.x), batch.y, old, self.old_classes, self.seen, self.params.distill_temperature)
        return {"bce": bce / len(self.seen) if self.params.average_units else bce}

    def keep_old_model(self) -> None:
        self.old_model = self.frozen_copy()


@register_strategy("lwf_mc")
class LwFMC(SigmoidDistillation, IncrementalLearner):
    Params = SigmoidDistillationParams

    def after_task(self, step: Step, data) -> None:
        self.keep_old_model()

    def state(self):
        return {"model": self.model, "old_model": self.old_model}
