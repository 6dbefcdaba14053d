"""What every class-incremental strategy shares: one learner, one head, the classes seen so far.

At each step the strategy gets the new task's training data and nothing else. It trains its learner
through :func:`exmodel.loop.train_loop` on batches of that data (plus replayed exemplars, for the
strategies that keep some) with the loss :meth:`IncrementalLearner.loss`: cross-entropy over the
classes seen so far (the head's other units are masked, van de Ven et al. 2020's "active units"),
plus whatever the method adds (:meth:`IncrementalLearner.extra_terms`). It predicts over the classes
seen so far. A method says only what differs:

* ``extra_terms(model, batch)`` — regularisers and distillation terms, a dict of named scalars;
* ``before_task(step, data)`` / ``after_task(step, data)`` — snapshots, importances, exemplars;
* ``finish_training(step, retrain)`` — more training on the step's data once the first pass is done
  (M²KD's fine-tuning after pruning);
* ``replay(batch_size)`` — a batch of kept exemplars to train on beside the new data, or
  ``training_set(data)`` — the data to train on (iCaRL's new data plus exemplars);
* ``loss`` — to replace the cross-entropy itself (LwF-MC's and iCaRL's sigmoid loss).

Defaults follow van de Ven & Tolias (2019, "Three scenarios for continual learning") for Split-MNIST,
as their code sets them (``param_values.py`` of GMvandeVen/continual-learning): a 2 × 400 MLP, Adam
(lr 1e-3, betas 0.9/0.999), batch 128, 2,000 iterations per task.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from exmodel import loop
from exmodel.loop import LRSchedule
from exmodel.data.types import ImageDataset
from exmodel.rng import seeded
from exmodel.strategies.base import Params, Step, Strategy
from exmodel.strategies.learner import Learner


class CILParams(Params):
    arch: str = "mlp"
    arch_kwargs: dict = Field(default_factory=dict)
    iterations: int = Field(2000, ge=1)  # per task (van de Ven et al.)
    epochs: float | None = Field(None, gt=0)  # when set, replaces `iterations`: passes over the task's data
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: LRSchedule = "constant"


class IncrementalLearner(Strategy):
    """Fine-tuning on each task's data: the base of every class-incremental strategy, and ``ft``."""

    consumes = frozenset({"data"})
    ex_model = False
    Params: ClassVar[type[Params]] = CILParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with seeded(self.seed):
            self.model = Learner(self.info, self.params.arch, self.params.arch_kwargs).to(self.device)
        self.seen: list[int] = []  # classes seen so far, in arrival order
        self.step_classes: tuple[int, ...] = ()

    # ------------------------------------------------------------------ what methods override

    def extra_terms(self, model: nn.Module, batch: loop.Batch) -> dict[str, torch.Tensor]:
        return {}

    def before_task(self, step: Step, data: ImageDataset) -> None:
        pass

    def after_task(self, step: Step, data: ImageDataset) -> None:
        pass

    def training_set(self, data: ImageDataset) -> ImageDataset:
        """What the step trains on: the new task's data (iCaRL adds its exemplars)."""
        return data

    def before_training(self, train: ImageDataset) -> None:
        """After ``before_task``, with the step's training set: every batch's first rows are
        ``train``'s images ``batch.extra["rows"]``, unchanged (no augmentation here), then replay."""

    def replay(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Images in [0, 1] and labels of kept exemplars to add to a batch; ``None``: nothing kept."""
        return None

    def after_step(self, model: nn.Module) -> None:
        pass

    def finish_training(self, step: Step, retrain: Callable[[float, str], loop.LossLog]) -> None:
        """After the step's training, before ``after_task``: ``retrain(fraction, label)`` trains again
        on the same batches and loss, for that fraction of the step's iterations (M²KD fine-tunes
        after pruning)."""

    # ------------------------------------------------------------------ the shared step

    def seen_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.info.num_classes, dtype=torch.bool, device=self.device)
        mask[self.seen] = True
        return mask

    def logits(self, model: nn.Module, x01: torch.Tensor) -> torch.Tensor:
        """The head's scores with the units of classes not seen yet at −∞."""
        return model(x01).masked_fill(~self.seen_mask(), float("-inf"))

    def loss(self, model: nn.Module, batch: loop.Batch) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(self.logits(model, batch.x), batch.y), **self.extra_terms(model, batch)}

    def settings(self, n: int) -> loop.LoopSettings:
        p = self.params
        iterations = p.iterations if p.epochs is None else max(1, round(p.epochs * -(-n // p.batch_size)))
        return loop.LoopSettings(iterations=iterations, optimizer=p.optimizer, lr=p.lr, momentum=p.momentum,
                                 weight_decay=p.weight_decay, lr_schedule=p.lr_schedule)

    def observe(self, step: Step, expert, data: ImageDataset, progress=None) -> None:
        self.step_classes = tuple(step.classes)
        self.seen += [c for c in step.classes if c not in self.seen]
        self.before_task(step, data)
        train = self.training_set(data)
        self.before_training(train)
        sample = loop.EpochSampler(len(train), self.params.batch_size, self.generator)
        labels = train.labels.to(self.device)

        def draw() -> loop.Batch:
            idx = sample()
            x, y = train.float_images(idx).to(self.device), labels[idx.to(self.device)]
            kept = self.replay(len(idx))
            if kept is not None:
                x, y = torch.cat([x, kept[0].to(self.device)]), torch.cat([y, kept[1].to(self.device)])
            return loop.Batch(x, y, extra={"rows": idx})

        def retrain(fraction: float, what: str) -> loop.LossLog:
            settings = self.settings(len(train))
            settings = dataclasses.replace(settings, iterations=max(1, round(fraction * settings.iterations)))
            return loop.train_loop(self.model, draw, self.loss, settings, self.generator, progress=progress,
                                   description=f"{self.type_name} task {step.index}{what}", after_step=self.after_step)

        self.loss_log[step.index] = retrain(1.0, "").means()
        self.finish_training(step, retrain)
        self.after_task(step, data)

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.model.eval(), x01)

    def state(self) -> Any:
        return {"model": self.model}

    def frozen_copy(self) -> nn.Module:
        """The learner as it is now, frozen: the teacher of distillation-based methods."""
        old = copy.deepcopy(self.model).eval()
        for p in old.parameters():
            p.requires_grad_(False)
        return old
