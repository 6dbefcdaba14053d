"""``m2kd``: multi-model and multi-level knowledge distillation (Zhou et al. 2020, "M²KD: Incremental
Learning via Multi-model and Multi-level Knowledge Distillation"), its ablations and its iCaRL forms.

LwF-MC distils every old class from the *last* model, so what step 1 knew reaches step 5 only through
steps 2, 3 and 4. M²KD distils each old class group from the model of the step that brought it:

* **multi-model distillation** (Eq. 2): sigmoid units; group ``k``'s units target the sigmoid outputs
  of step ``k``'s model, the current classes their labels (``multi_model``; ``skip`` = Sec. 4.4's
  "skip1/skip2": the first groups are taught by a later model);
* **auxiliary distillation** (Eq. 3-4): a classifier on an intermediate feature map (training only),
  distilled the same way from each step's auxiliary classifier, plus α · BCE on the labels; the total
  is ``L_MMD + λ · L_AD`` with α = 0.5, λ = 1 (Sec. 4.2);
* **model reconstruction** (Sec. 3.3, Algorithm 1): after each step the largest ``1 − ratio`` of the
  still-free weights of every convolution and hidden linear layer are frozen under the step's id, the
  rest zeroed and released, and the step fine-tuned for half its iterations (the paper: half the
  epochs); each step's biases, BatchNorm and classifiers are saved. Every earlier model is rebuilt
  bit for bit from the current one (:class:`~exmodel.strategies.cil.masks.StepMasks`), so nothing
  but the masks and those small tensors is kept. Ratio 0.75 for fewer than 20 classes per step, 0.8
  otherwise (Sec. 4.2). ``prune_ratio: null`` keeps every snapshot instead (``m2kd_noprune``: the
  upper bound).

Registered forms: ``lwf_mc_aux`` (LwF-MC + auxiliary distillation), ``lwf_mc_mmd`` (multi-model
only), ``m2kd_noprune``, ``m2kd_paper``, ``m2kd_skip1``, ``m2kd_skip2``, ``m2kd`` (our default: the
paper's M²KD plus SKD's knowledge delegator, chosen on a validation split, docs/results.md), and
with iCaRL's exemplars and nearest-mean classifier ``icarl_aux`` and ``icarl_m2kd`` (Sec. 4.6).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from exmodel import loop
from exmodel.errors import ConfigError
from exmodel.rng import seeded
from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.auxiliary import attach_auxiliary, default_layer, forward_with_aux
from exmodel.strategies.cil.er import ReplayParams
from exmodel.strategies.cil.icarl import ICaRL
from exmodel.strategies.cil.incremental import IncrementalLearner
from exmodel.strategies.cil.losses import (aligned_weights, auxiliary_distillation_loss,
                                           multi_model_distillation_loss)
from exmodel.strategies.cil.lwf_mc import SigmoidDistillationParams
from exmodel.strategies.cil.masks import StepMasks, check_capacity, prunable_names


class M2KDParams(SigmoidDistillationParams):
    multi_model: bool = True  # Eq. 2; False: every old unit from the last model (Eq. 1, LwF-MC)
    skip: int = Field(0, ge=0)  # Sec. 4.4: the first `skip` steps' groups taught by step skip + 1's model
    aux: bool = True  # auxiliary distillation (Eq. 3-4)
    aux_layer: str | None = None  # None: block2 of a LeNet, layer2 of a ResNet, hidden.0 of an MLP
    aux_pool: int | None = Field(1, ge=1)  # the map average-pooled to this side (1: global); None: kept whole
    aux_alpha: float = Field(0.5, ge=0)  # α of Eq. 3
    aux_weight: float = Field(1.0, ge=0)  # λ of Eq. 4
    aux_labels_on_old: bool = True  # Eq. 3 puts the labels on every unit; False: on the new units only
    prune_ratio: float | None = Field(0.75, gt=0, lt=1)  # None: keep every snapshot (no reconstruction)
    finetune_fraction: float = Field(0.5, ge=0)  # after pruning, this share of the step's iterations
    # ours: after each step the new classes' head rows rescaled to the old rows' mean norm (Zhao et al.
    # 2020, as in skd), against the bias towards the classes just learnt
    weight_aligning: bool = False
    # ours: SKD's knowledge delegator (its default settings), trained after each step against the
    # learner; half of every batch is its images of the old classes, labelled by the previous model
    # (Eq. 5 of SKD): the new units get old-class negatives, the old units more images to be distilled on
    delegator: bool = False
    delegator_params: dict = Field(default_factory=dict)  # overrides of SKD's delegator settings (SKDParams)
    # each teacher's outputs on the step's training images computed once, not on every batch (the same
    # values up to the last bits, which a convolution may round differently for a batch of a few images)
    cache_teachers: bool = True


def teacher_steps(n_old_groups: int, multi_model: bool, skip: int) -> list[int]:
    """For each old class group ``g = 1..n`` (the classes step ``g`` brought), the step whose model
    teaches its units: ``g`` itself (Eq. 2), the last step (Eq. 1), or for the first ``skip`` groups
    step ``skip + 1`` (at most the last)."""
    last = n_old_groups
    if not multi_model:
        return [last] * n_old_groups
    return [min(max(g, skip + 1), last) for g in range(1, n_old_groups + 1)]


def steps_still_needed(finished: int, multi_model: bool, skip: int) -> set[int]:
    """The finished steps whose models a later step may still ask for (the snapshots to keep)."""
    if finished == 0:
        return set()
    if not multi_model:
        return {finished}
    return {finished} | set(range(skip + 1, finished + 1))


class MultiLevelDistillation:
    """Mixin for an :class:`IncrementalLearner` (and :class:`ICaRL`): Eq. 2-4's loss, the auxiliary
    classifier, and the teachers rebuilt from masks or kept as snapshots."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.aux:
            with seeded(self.seed + 2):  # its initial weights: from this seed, not torch's global generator
                attach_auxiliary(self.model, p.aux_layer or default_layer(p.arch), p.aux_pool)
        self.groups: list[tuple[int, ...]] = []  # the classes each finished step brought
        self.snapshots: dict[int, nn.Module] = {}  # without pruning: step id -> its frozen model
        self.teachers: list[tuple[tuple[int, ...], nn.Module]] = []  # during a step: (group, its teacher)
        self.masks: StepMasks | None = None
        self.finetune_log: dict[int, dict[str, float]] = {}
        self.delegator = None
        self.delegator_terms: dict[int, dict[str, float]] = {}  # the delegator's last loss terms per step
        self.previous: nn.Module | None = None  # during a step: the model of the step before
        # during a step: each teacher's outputs on every training image, computed once (teachers are
        # frozen and the images unaugmented); only the replayed rows of a batch go through them again
        self.teacher_cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if p.delegator:
            from exmodel.synthesis.delegator import DelegatorGenerator

            d = self.delegator_settings()
            with seeded(self.seed + 1):
                self.delegator = DelegatorGenerator(self.info.input_shape, d.z_dim, d.width, d.helper_bn).to(self.device)
        self.class_names: list[str] = [str(c) for c in range(self.info.num_classes)]  # the data's, once seen
        if p.prune_ratio is not None:
            heads = [self.model.net.head] if hasattr(self.model.net, "head") else []
            skip = heads + ([self.model.aux] if p.aux else []) + list(self.model.task_heads.values())
            self.masks = StepMasks(self.model, prunable_names(self.model, skip=skip))
            check_capacity(self.masks.sizes(), p.prune_ratio, self.info.n_experiences)

    def delegator_settings(self):
        """SKD's delegator settings with this strategy's ``delegator_params`` over them."""
        from pydantic import ValidationError

        from exmodel.strategies.skd import SKDParams

        try:
            return SKDParams(**self.params.delegator_params)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"delegator_params: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    # ------------------------------------------------------------------ teachers

    def snapshot(self, step_id: int) -> nn.Module:
        """The frozen model of finished step ``step_id`` (1-based), rebuilt or kept."""
        if self.masks is not None:
            return self.masks.rebuild(self.model, step_id)
        return self.snapshots[step_id]

    def before_task(self, step: Step, data) -> None:
        super().before_task(step, data)
        self.class_names = list(getattr(data, "class_names", None) or self.class_names)
        steps = teacher_steps(len(self.groups), self.params.multi_model, self.params.skip)
        models = {k: self.snapshot(k) for k in sorted(set(steps))}
        self.teachers = [(group, models[k]) for group, k in zip(self.groups, steps)]
        self.previous = models.get(len(self.groups))
        if self.masks is not None:
            self.masks.train_free(self.model)

    @torch.no_grad()
    def before_training(self, train) -> None:
        """With ``cache_teachers``: every teacher's outputs on every image of the step's training set, in
        chunks of 512 — about a tenth of the forward passes of M²KD's 900 iterations of 128 images on
        ~12,000. An eval-mode forward pass treats each image alone, so these are the outputs a batch
        would give; on this CPU the same bits for batches of 12 images or more (a LeNet-BN's on 1 to
        6 images differ by ~1e-8), and the M²KD MNIST run gives identical results."""
        self.teacher_cache = {}
        if not self.params.cache_teachers:
            return
        for _, teacher in self.teachers:
            if id(teacher) in self.teacher_cache:
                continue
            parts = [self._outputs(teacher, train.float_images(slice(i, i + 512)).to(self.device))
                     for i in range(0, len(train), 512)]
            aux = torch.cat([a for _, a in parts]) if parts and parts[0][1] is not None else None
            self.teacher_cache[id(teacher)] = (torch.cat([z for z, _ in parts]), aux)

    def _teacher_outputs(self, teacher: nn.Module, batch: loop.Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's outputs on the batch: cached for its unchanged training images, computed for
        the rest (the replayed rows, or everything when the batch was mixed)."""
        rows, cached = batch.extra.get("rows"), self.teacher_cache.get(id(teacher))
        if rows is None or cached is None or batch.mix is not None:
            return self._outputs(teacher, batch.x)
        rows = rows.to(cached[0].device)
        n = len(rows)
        if n == len(batch.x):
            return cached[0][rows], None if cached[1] is None else cached[1][rows]
        z, a = self._outputs(teacher, batch.x[n:])
        return torch.cat([cached[0][rows], z]), None if a is None else torch.cat([cached[1][rows], a])

    def replay(self, batch_size: int):
        """With the delegator: as many of its images as the batch has real ones, labelled by the previous
        model's most likely old class."""
        if self.delegator is None or self.previous is None:
            return super().replay(batch_size)
        x01 = self.delegator.sample(batch_size, self.generator) * self.model.std + self.model.mean
        old = [c for g in self.groups for c in g]
        with torch.no_grad():
            scores = self.previous(x01)[:, old]
        return x01, torch.as_tensor(old, device=x01.device)[scores.argmax(1)]

    def _outputs(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return forward_with_aux(model, x) if self.params.aux else (model(x), None)

    def loss(self, model: nn.Module, batch: loop.Batch) -> dict[str, torch.Tensor]:
        p = self.params
        logits, aux = self._outputs(model, batch.x)
        main, side, cache = [], [], {}
        with torch.no_grad():
            for group, teacher in self.teachers:
                if id(teacher) not in cache:
                    cache[id(teacher)] = self._teacher_outputs(teacher, batch)
                t_logits, t_aux = cache[id(teacher)]
                main.append((group, t_logits))
                side.append((group, t_aux))
        scale = 1.0 / len(self.seen) if p.average_units else 1.0
        terms = {"mmd": scale * multi_model_distillation_loss(logits, batch.y, main, self.seen, p.distill_temperature)}
        if p.aux:
            terms["aux"] = scale * p.aux_weight * auxiliary_distillation_loss(aux, batch.y, side, self.seen,
                                                                              p.aux_alpha, p.aux_labels_on_old)
        return terms

    # ------------------------------------------------------------------ masks

    def after_step(self, model: nn.Module) -> None:
        super().after_step(model)
        if self.masks is not None:
            self.masks.hold(model)

    def finish_training(self, step: Step, retrain) -> None:
        super().finish_training(step, retrain)
        if self.masks is not None:
            step_id = len(self.groups) + 1
            self.masks.prune(self.model, step_id, self.params.prune_ratio)
            if self.params.finetune_fraction > 0:
                self.masks.train_owned(self.model, step_id)
                self.finetune_log[step.index] = retrain(self.params.finetune_fraction, " fine-tuning").means()
        old = [c for c in self.seen if c not in self.step_classes]
        if self.params.weight_aligning and old and hasattr(self.model.net, "head"):
            with torch.no_grad():
                head = self.model.net.head
                head.weight.copy_(aligned_weights(head.weight, old, list(self.step_classes)))
        if self.masks is not None:
            self.masks.save_step(self.model)  # after every change: the step's model as it is deployed

    def keep_old_model(self) -> None:
        """End of a step: record its classes; without masks, keep its model while a later step needs it;
        with the delegator, train it against the learner (unless no step follows)."""
        self.groups.append(tuple(self.step_classes))
        self.teachers, self.previous, self.teacher_cache = [], None, {}
        if self.delegator is not None and len(self.groups) < self.info.n_experiences:
            from exmodel.strategies.skd import fit_delegator

            d = self.delegator_settings()
            epochs = d.delegator_epochs if len(self.groups) == 1 else d.finetune_epochs
            self.delegator_terms[len(self.groups)] = fit_delegator(self, d, epochs, len(self.groups) - 1)
        if self.masks is None:
            self.snapshots[len(self.groups)] = self.frozen_copy()
            needed = steps_still_needed(len(self.groups), self.params.multi_model, self.params.skip)
            self.snapshots = {k: m for k, m in self.snapshots.items() if k in needed}

    def kept(self) -> dict[str, Any]:
        """What the method keeps beside the current model: packed masks and per-step tensors, or snapshots."""
        extra = {"delegator": self.delegator} if self.delegator is not None else {}
        if self.masks is not None:
            return {"masks": self.masks.state(), **extra}
        return {"snapshots": list(self.snapshots.values()), **extra}


class M2KDOursParams(M2KDParams):
    """Our default: the paper's M²KD with SKD's knowledge delegator (chosen on a validation split)."""

    delegator: bool = True


@register_strategy("m2kd")
class M2KD(MultiLevelDistillation, IncrementalLearner):
    Params = M2KDOursParams

    def after_task(self, step: Step, data) -> None:
        self.keep_old_model()

    def state(self) -> Any:
        return {"model": self.model, **self.kept()}

    def save_learner(self, path):
        """Write the learner to one safetensors file (``exmodel inspect`` reads it back)."""
        from exmodel.strategies.cil.learner_file import save_learner

        return save_learner(self, path)


class M2KDPaperParams(M2KDParams):
    """The paper's settings (Sec. 4.2): α = 0.5, λ = 1, ratio 0.75, half the iterations to fine-tune."""


@register_strategy("m2kd_paper")
class M2KDPaper(M2KD):
    Params = M2KDPaperParams


class NoPruneParams(M2KDParams):
    prune_ratio: float | None = Field(None, gt=0, lt=1)


@register_strategy("m2kd_noprune")
class M2KDNoPrune(M2KD):
    """Every snapshot kept: the upper bound of the reconstruction (Sec. 4.3)."""

    Params = NoPruneParams


class Skip1Params(M2KDParams):
    skip: int = Field(1, ge=0)


class Skip2Params(M2KDParams):
    skip: int = Field(2, ge=0)


@register_strategy("m2kd_skip1")
class M2KDSkip1(M2KD):
    Params = Skip1Params


@register_strategy("m2kd_skip2")
class M2KDSkip2(M2KD):
    Params = Skip2Params


class LwFMCAuxParams(NoPruneParams):
    multi_model: bool = False


class LwFMCMMDParams(NoPruneParams):
    aux: bool = False


@register_strategy("lwf_mc_aux")
class LwFMCAux(M2KD):
    """LwF-MC with auxiliary distillation from the last model (Sec. 4.4)."""

    Params = LwFMCAuxParams


@register_strategy("lwf_mc_mmd")
class LwFMCMMD(M2KD):
    """LwF-MC with multi-model distillation only, every snapshot kept (Sec. 4.4)."""

    Params = LwFMCMMDParams


class ICaRLM2KDParams(ReplayParams, M2KDParams):
    pass


@register_strategy("icarl_m2kd")
class ICaRLM2KD(MultiLevelDistillation, ICaRL):
    """iCaRL (exemplars, nearest mean of exemplars) trained with M²KD's loss (Sec. 4.6)."""

    Params = ICaRLM2KDParams

    def state(self) -> Any:
        return {"model": self.model, "exemplars": self.memory.state(), "class_means": self.class_means, **self.kept()}


class ICaRLAuxParams(ICaRLM2KDParams):
    multi_model: bool = False
    prune_ratio: float | None = Field(None, gt=0, lt=1)


@register_strategy("icarl_aux")
class ICaRLAux(ICaRLM2KD):
    """iCaRL with auxiliary distillation from the last model (Sec. 4.6)."""

    Params = ICaRLAuxParams
