"""SKD: exemplar-free class-incremental learning with a self-distilled knowledge delegator
(``../shared/papers/002_…``, Sec. III, Algorithm 1).

After every task (the base task included) the knowledge delegator — a generator with a helper BN
layer (:mod:`exmodel.synthesis.delegator`) — is trained without data against the learner ``T_n``,
by imitate & explore with a freshly initialised clone ``S_n``; it is fine-tuned from one task to the
next. Learning task ``n + 1``:

* ``T_{n+1}`` starts from ``T_n``; every batch holds as many delegator images ``x'`` as new real
  images, the images ``x'`` labelled by ``T_n``'s arg-max over the old classes (Eq. 5);
* ``L_cil = γ_n · L_cls + L_fc`` (Eq. 9-11): cross-entropy over the classes seen so far, and the
  feature cosine discrepancy ψ between ``T_n`` and ``T_{n+1}`` on the whole batch;
* ``γ_n = β / (N · Σ_{i=1..n} |C_i|)`` (Eq. 12): ``N`` incremental tasks, ``Σ |C_i|`` the classes
  they brought so far (the base task is task 0), β = 5.

Ours, beside the paper (``skd``): while ``T_{n+1}`` learns, the delegator keeps exploring — one
explore step per learner step against ``T_{n+1}`` itself instead of the clone (``explore_every``),
so that its images go where the learner has started to see the old classes differently from ``T_n``;
weight aligning of the new classes' head rows; and logit distillation beside ψ.

What is kept between tasks is the model and the delegator: no images, and the same size after every
task. ``skd_paper`` keeps the paper's settings with the epochs scaled to this machine (the scaling is
in :class:`SKDPaperParams`); ``skd`` is our default (docs/results.md, "SKD").
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from exmodel import loop
from exmodel.loop import LRSchedule
from exmodel.models import build_model
from exmodel.rng import seeded
from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner
from exmodel.strategies.cil.losses import aligned_weights, distillation_kl
from exmodel.synthesis.delegator import DelegatorGenerator, DelegatorSettings, train_delegator
from exmodel.synthesis.delegator_losses import (bn_norm_loss, class_balance_loss, feature_cosine_discrepancy,
                                                pseudo_label_cross_entropy)
from exmodel.synthesis.priors import BNStatsRecorder


class SKDParams(CILParams):
    arch: str = "lenet_bn"  # R_feature needs BatchNorm layers in the learner
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    lr_schedule: LRSchedule = "cosine"
    weight_decay: float = Field(5e-4, ge=0)
    iterations: int = Field(600, ge=1)
    # the incremental step (Sec. III-C)
    beta: float = Field(5.0, gt=0)  # β of Eq. 12
    adaptive_weight: bool = True  # False: γ = 1 (the Table III ablation)
    use_delegator: bool = True  # False: new data only, L_fc on it (the "without SKD" ablation)
    w_fc: float = Field(1.0, ge=0)
    # ours: after each incremental task, the new classes' head weights rescaled to the old ones' mean
    # norm (weight aligning, Zhao et al. 2020) — one new class trained on real data beside five old
    # ones seen only through the delegator leaves the head biased towards it
    weight_aligning: bool = True
    # ours: distillation of the old model's old-class logits on the whole batch (Hinton's KD at
    # temperature kd_temperature, as LwF does), beside ψ on the features; 0: off (the paper)
    w_kd: float = Field(1.0, ge=0)
    kd_temperature: float = Field(2.0, gt=0)
    # ours: L_cls as the mean of the per-class mean losses, so that the one new class (half the
    # batch) weighs what each old class does; False: the plain batch mean (the paper)
    balanced_cls: bool = False
    # ours: during the incremental step, one explore step of the delegator every `explore_every`
    # learner steps against the learner itself instead of a clone (Eq. 3 with T_{n+1} in S's place,
    # plus L_cat, L_div and R_feature on T_n): it draws the old classes' images that the learner has
    # started to see differently from T_n — where the new class is taking an old one; 0: off (the paper)
    explore_every: int = Field(1, ge=0)
    # the delegator (Sec. III-B)
    z_dim: int = Field(100, ge=1)
    width: int = Field(16, ge=1)  # DFAD's generator has 64; 16 keeps a CPU epoch near 0.4 s
    helper_bn: bool = True
    delegator_epochs: int = Field(150, ge=1)  # against the base model
    finetune_epochs: int = Field(40, ge=0)  # against each later model, starting from the last delegator
    imitate_steps: int = Field(5, ge=1)
    explore_steps: int = Field(1, ge=1)
    delegator_batch: int = Field(64, ge=2)
    imitate_lr: float = Field(0.1, gt=0)
    explore_lr: float = Field(1e-3, gt=0)
    delegator_lr_drop_every: int | None = Field(None, ge=1)  # ×0.1 every this many delegator epochs (paper: 100)
    lam: float = Field(1.0, ge=0)  # λ of Eq. 8
    w_cat: float = Field(1.0, ge=0)
    w_div: float = Field(1.0, ge=0)
    w_feature: float = Field(1.0, ge=0)


class SKDPaperParams(SKDParams):
    """The paper's settings (Sec. IV-A) with the epochs scaled to a 2-core CPU: the incremental model
    is trained with SGD from lr 0.1, divided by 10 at 1/2 and 3/4 of the schedule (80 and 120 of 160
    epochs); the delegator with SGD 0.1 (imitate) and Adam 1e-3 (explore), 5 imitate steps and 1
    explore step per epoch, λ = 1, β = 5; no weight aligning, logit distillation or exploring against
    the learner. Scaled to a 2-core CPU: 1,200 iterations of 128 images per task instead of 160 epochs;
    a delegator of width 16 instead of DFAD's 64, trained for 150 epochs (the paper drops its rates
    every 100) and fine-tuned for 40 per task, batches of 64 instead of 1,024."""

    lr: float = Field(0.1, gt=0)
    lr_schedule: LRSchedule = "step"
    iterations: int = Field(1200, ge=1)
    weight_aligning: bool = False
    w_kd: float = Field(0.0, ge=0)
    explore_every: int = Field(0, ge=0)


@register_strategy("skd")
class SKD(IncrementalLearner):
    Params = SKDParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        with seeded(self.seed + 1):
            self.delegator = DelegatorGenerator(self.info.input_shape, p.z_dim, p.width, p.helper_bn).to(self.device)
        self.old_model: nn.Module | None = None
        self.old_classes: list[int] = []
        self.gamma = 1.0
        self.new_classes_so_far = 0  # Σ_{i=1..n} |C_i|: classes brought by the incremental tasks
        self.delegator_terms: dict[int, dict[str, float]] = {}

    def before_task(self, step: Step, data) -> None:
        self.old_classes = [c for c in self.seen if c not in step.classes]
        if step.index == 0:
            self.old_model = None
            return
        self.old_model = self.frozen_copy()
        self.learner_steps = 0
        self.explore_opt = torch.optim.Adam(self.delegator.parameters(), lr=self.params.explore_lr)
        self.new_classes_so_far += len(step.classes)
        n_incremental = max(1, self.info.n_experiences - 1)
        self.gamma = self.params.beta / (n_incremental * self.new_classes_so_far) if self.params.adaptive_weight else 1.0

    def replay(self, batch_size: int):
        if self.old_model is None or not self.params.use_delegator:
            return None
        xn = self.delegator.sample(batch_size, self.generator)
        x01 = xn * self.model.std + self.model.mean  # the delegator draws normalized images
        with torch.no_grad():
            logits = self.old_model(x01)[:, self.old_classes]
        labels = torch.as_tensor(self.old_classes, device=x01.device)[logits.argmax(1)]  # Eq. 5
        return x01, labels

    def loss(self, model: nn.Module, batch: loop.Batch) -> dict[str, torch.Tensor]:
        if self.old_model is None:  # the base task: plain cross-entropy
            return {"ce": F.cross_entropy(self.logits(model, batch.x), batch.y)}
        features = model.forward_features(batch.x)
        logits = model.forward_head(features).masked_fill(~self.seen_mask(), float("-inf"))
        with torch.no_grad():
            old_features = self.old_model.forward_features(batch.x)
        weight = class_balance_weights(batch.y, self.info.num_classes) if self.params.balanced_cls else None
        terms = {"cls": self.gamma * F.cross_entropy(logits, batch.y, weight=weight),
                 "fc": self.params.w_fc * feature_cosine_discrepancy(old_features, features)}
        if self.params.w_kd:
            with torch.no_grad():
                old_logits = self.old_model.forward_head(old_features)[:, self.old_classes]
            terms["kd"] = self.params.w_kd * distillation_kl(logits[:, self.old_classes], old_logits,
                                                             self.params.kd_temperature)
        return terms

    def after_step(self, model: nn.Module) -> None:
        p = self.params
        if self.old_model is None or not p.use_delegator or not p.explore_every:
            return
        self.learner_steps += 1
        if self.learner_steps % p.explore_every:
            return
        self.delegator.train()
        was_training = model.training
        model.eval()  # the learner as it predicts; its BatchNorm statistics stay the real data's
        with BNStatsRecorder(self.old_model) as rec:
            x01 = self.delegator(self.delegator.codes(p.delegator_batch, self.generator)) * model.std + model.mean
            old_features = self.old_model.forward_features(x01)
            old_logits = self.old_model.forward_head(old_features)[:, self.old_classes]
            rec.enabled = False
            loss = (-p.lam * feature_cosine_discrepancy(old_features, model.forward_features(x01))
                    + p.w_cat * pseudo_label_cross_entropy(old_logits) + p.w_div * class_balance_loss(old_logits)
                    + p.w_feature * bn_norm_loss(rec.stats))
        params = list(self.delegator.parameters())
        for param, grad in zip(params, torch.autograd.grad(loss, params), strict=True):
            param.grad = grad
        self.explore_opt.step()
        model.train(was_training)

    def after_task(self, step: Step, data) -> None:
        if self.params.weight_aligning and self.old_classes:
            head = self.model.net.head
            with torch.no_grad():
                head.weight.copy_(aligned_weights(head.weight, self.old_classes, list(step.classes)))
        self.old_model = None
        if step.index == self.info.n_experiences - 1 or not self.params.use_delegator:
            return  # no task follows: the delegator would never be used
        p = self.params
        epochs = p.delegator_epochs if step.index == 0 else p.finetune_epochs
        if not epochs:
            return
        self.delegator_terms[step.index] = fit_delegator(self, p, epochs, step.index)
        self.loss_log[step.index] = {**self.loss_log.get(step.index, {}),
                                     **{f"delegator_{k}": v for k, v in self.delegator_terms[step.index].items()}}

    def state(self) -> Any:
        return {"model": self.model, "delegator": self.delegator}


def fit_delegator(strategy: IncrementalLearner, p: SKDParams, epochs: int, index: int) -> dict[str, float]:
    """Imitate & explore (Algorithm 1) of ``strategy.delegator`` against the learner as it is now (the
    classes seen so far), with a fresh clone; SKD's settings ``p``. Returns the final loss terms."""
    teacher = strategy.model.as_expert(strategy.seen, name=f"T{index}")
    with seeded(strategy.seed + 100 + index):
        student = build_model(strategy.model.arch, **strategy.model.net.arch_kwargs).to(strategy.device)
    settings = DelegatorSettings(epochs=epochs, imitate_steps=p.imitate_steps, explore_steps=p.explore_steps,
                                 batch_size=p.delegator_batch, imitate_lr=p.imitate_lr, explore_lr=p.explore_lr,
                                 lr_drop_every=p.delegator_lr_drop_every, lam=p.lam, w_cat=p.w_cat, w_div=p.w_div,
                                 w_feature=p.w_feature)
    return train_delegator(strategy.delegator, teacher, student, settings, strategy.generator,
                           description=f"delegator after task {index}")


def class_balance_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights ``1 / n_c`` (``n_c``: the class's images in the batch; 0 for absent classes):
    with them ``F.cross_entropy``'s weighted mean is the mean over the classes present of each class's
    mean loss."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float32)
    return torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))


register_strategy("skd_paper")(type("SKDPaper", (SKD,), {"Params": SKDPaperParams, "__doc__": SKD.__doc__}))
