"""Ex-Model Distillation (Carta et al. 2021, Algorithm 1).

The learner keeps one model and a fixed-size buffer. For each expert of the stream it

1. asks a knowledge source for ⌊N/i⌋ samples of the expert's classes (model inversion, data impression,
   auxiliary data; replay and noise are the upper and lower bounds) — Eq. 5;
2. shrinks the old buffer, class-balanced, to N − ⌊N/i⌋ and adds the new samples;
3. distils for a fixed number of SGD iterations on random (augmented) buffer mini-batches, with the
   targets of Eq. 6-9 (previous model for old classes, expert for its classes) and the loss of
   Eq. 10-11 (MSE + λ_CE · CE); see ``losses.py``. The steps themselves are the one training loop's
   (:mod:`exmodel.loop`); this class supplies the buffer batches and the loss.

In multi-task (MT) streams it is the paper's multi-head variant: old heads from the previous model,
the new head from the expert, every softmax restricted to the sample's task (``multitask.py``).

Between experts it keeps only the model and the buffer; the previous model used for the targets is a
temporary copy. Each knowledge source is registered twice: ``<x>_ed_paper`` with the paper's settings
as far as the paper and its reference-code README give them, and ``<x>_ed`` with our defaults
(``presets.py``).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from pydantic import create_model

from exmodel.errors import ExmodelError
from exmodel.loop import Batch, LoopSettings, train_loop
from exmodel.strategies.base import Params, Step, Strategy
from exmodel.strategies.ed.buffer import Buffer, new_samples_per_step
from exmodel.strategies.ed.losses import ed_loss, ed_targets, mix_targets, soft_labels
from exmodel.strategies.ed.multitask import take_expert_head, task_class_masks
from exmodel.strategies.ed.params import EDParams
from exmodel.strategies.learner import Learner
from exmodel.synthesis.base import fit_input
from exmodel.synthesis.guide import Guide
from exmodel.synthesis.priors import gaussian_blur3x3


class ExModelDistillation(Strategy):
    source_name: ClassVar[str] = "model_inversion"
    Params: ClassVar[type[Params]] = EDParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from exmodel.synthesis import build_source

        p = self.params
        if p.mixup and self.info.kind == "mt":
            raise ExmodelError(f"{self.type_name}: mixup mixes tasks; it is not available on multi-task streams")
        self.class_masks = None  # MT: (K, K) each class's task classes; see ed_multitask
        if self.info.kind == "mt":
            self.class_masks = task_class_masks(self.info.task_classes, self.info.num_classes).to(self.device)
        # ``source_params`` given in a config update the preset's instead of replacing them.
        fields = type(self).Params.model_fields
        preset = fields["source_params"].get_default(call_default_factory=True)
        preset_source = fields["source"].get_default() or self.source_name
        source = p.source or self.source_name
        if source != preset_source:
            preset = {}  # another source than the preset's: the preset's settings do not apply to it
        given = p.source_params if "source_params" in p.model_fields_set else {}
        self.source = build_source(source, {**preset, **given}, data_dir=self.info.data_dir)
        # a config may give another source than the preset's (e.g. source: replay, which reads data)
        self.ex_model = self.source.ex_model
        self.exemplar_free = not self.source.needs_data  # replay keeps real images in its buffer
        self.consumes = frozenset({"expert", "data"} if self.source.needs_data else {"expert"})
        self.buffer = Buffer(p.buffer_size, quantize=p.quantize_buffer)
        self.model: Learner | None = None
        self.seen = torch.zeros(self.info.num_classes, dtype=torch.bool)
        self.checks: list[tuple[torch.Tensor, torch.Tensor, bool]] = []  # per expert; see agreement_samples
        self.augment = None
        if p.augment:
            from exmodel.synthesis.augment import make_augmentation

            self.augment = make_augmentation(translate=p.translate, degrees=p.degrees, hflip=p.hflip)
        self.jitter = None
        if p.jitter_morph or p.jitter_gamma or p.jitter_blur:
            from exmodel.synthesis.augment import StyleJitter

            self.jitter = StyleJitter(p.jitter_morph, p.jitter_gamma, p.jitter_blur)

    def _build_model(self, expert) -> Learner:
        arch = self.params.arch or expert.card.arch
        kwargs = dict(self.params.arch_kwargs)
        if self.params.arch is None:  # the expert's architecture (and options), over the whole label space
            inherited = {k: v for k, v in expert.card.arch_kwargs.items() if k not in ("num_classes", "heads")}
            kwargs = {**inherited, **kwargs}
        info = self.info  # the weights draw from the strategy's own stream (observe runs in it)
        inputs = expert.card.normalization  # the ex-model sees inputs like the first expert does
        info = type(info)(**{**info.__dict__, "mean": tuple(inputs.mean), "std": tuple(inputs.std)})
        norm = self.params.norm
        if norm == "auto":
            norm = None if self.class_masks is not None and self.params.expert_head else "none"
        if norm is not None:
            kwargs["norm"] = norm
        return Learner(info, arch, kwargs).to(self.device)

    def observe(self, step: Step, expert, data, progress=None) -> None:
        p = self.params
        expert = expert.to(self.device).eval()
        first = self.model is None
        if first:
            self.model = self._build_model(expert)
        n_new = new_samples_per_step(p.buffer_size, step.index)
        prev = self._frozen_copy() if step.index > 0 else None
        guide = {}
        if prev is not None and self.source.accepts_guide:  # the previous ex-model judges the new samples too
            guide = {"guide": Guide(prev, self.seen.clone().to(self.device), tuple(self.info.input_shape))}
        x, y = self.source.generate(expert, n_new, self.generator, data=data, progress=progress, **guide)
        x = fit_input(x, self.info.input_shape)
        self.buffer.update(step.index, x, y, self.generator)
        if p.check_samples:
            self._keep_checks(expert, x, y)
        expert_classes = torch.zeros(self.info.num_classes, dtype=torch.bool)
        expert_classes[list(expert.card.trained_class_ids)] = True
        if self.class_masks is not None and p.expert_head:
            take_expert_head(self.model.net, expert, step.classes, first)
        try:
            self._distill(expert, prev, self.seen.clone(), expert_classes, progress, step.index, n_new)
        finally:
            self.source.release()  # a generator kept for fresh draws lives for this step only
        self.seen |= expert_classes

    def _distill(self, expert, prev, prev_classes, expert_classes, progress, index, n_new) -> None:
        """Algorithm 1's inner loop: ``iterations`` steps on random buffer mini-batches, Eq. 6-11."""
        p = self.params
        prev_classes, expert_classes = prev_classes.to(self.device), expert_classes.to(self.device)
        n = len(self.buffer)

        def draw() -> Batch:
            idx = torch.randint(n, (min(p.batch_size, n),), generator=self.generator)
            x = self.buffer.float_images(idx).to(self.device)
            y = self.buffer.labels[idx].to(self.device)
            if p.fresh:
                x, y = self._redraw(x, y, idx >= n - n_new)
            return Batch(x, y)

        def loss(model, batch: Batch) -> dict[str, torch.Tensor]:
            x, y = batch.x, batch.y
            with torch.no_grad():
                t_exp = expert.global_logits(fit_input(x, expert.card.input_shape), fill=float("nan"))
                t_prev = prev(self._front(x)) if prev is not None else None
                allowed = self.class_masks[y] if self.class_masks is not None else None
                target = ed_targets(t_prev, t_exp, y, prev_classes, expert_classes, p.normalize, allowed)
                label = y
                if batch.mix is not None:
                    perm, lam = batch.mix.perm, batch.mix.lam
                    target = mix_targets(target, ed_targets(t_prev, t_exp, y[perm], prev_classes, expert_classes,
                                                            p.normalize), lam)
                    label = soft_labels(y, perm, lam, self.info.num_classes)
            _, mse, ce = ed_loss(model(self._front(x)), target, label, p.lambda_ce, p.mse_weight,
                                 p.label_smoothing, allowed)
            return {"mse": p.mse_weight * mse, "ce": p.lambda_ce * ce}

        settings = LoopSettings(iterations=p.iterations, optimizer=p.optimizer, lr=p.lr, momentum=p.momentum,
                                weight_decay=p.weight_decay, lr_schedule=p.lr_schedule, ema=p.ema, mixup=p.mixup)
        self.loss_log[index] = train_loop(self.model, draw, loss, settings, self.generator, augment=self.augment,
                                          jitter=self.jitter, progress=progress,
                                          description=f"{self.type_name} distil step {index}").means()

    def _keep_checks(self, expert, x: torch.Tensor, y: torch.Tensor) -> None:
        """Held-out samples of this expert (fresh draws where the source can redraw, else its buffer
        samples), labelled by the expert, for :meth:`agreement_samples`."""
        n = self.params.check_samples
        drawn = self.source.redraw(y[torch.randperm(len(y), generator=self.generator)[:n]], self.generator) \
            if len(y) else None
        if drawn is not None:
            self.checks.append((fit_input(drawn[0], self.info.input_shape), drawn[1].cpu(), True))
        else:
            self.checks.append((x[:n].clone(), y[:n].clone(), False))

    def agreement_samples(self) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        """For each expert observed with ``check_samples > 0``: ``(images in [0, 1], the expert's labels,
        held_out)``; ``held_out`` is False where the samples are among those distilled on."""
        return list(self.checks)

    def _frozen_copy(self) -> Learner:
        """A copy of the current ex-model in eval mode without gradients: the teacher of old classes."""
        prev = copy.deepcopy(self.model).eval()
        for param in prev.parameters():
            param.requires_grad_(False)
        return prev

    def _redraw(self, x, y, new: torch.Tensor):
        """Replace the batch's samples of the current expert (``new``) by fresh ones from the source."""
        new = new.to(self.device)
        drawn = self.source.redraw(y[new], self.generator) if bool(new.any()) else None
        if drawn is None:
            return x, y
        x, y = x.clone(), y.clone()
        x[new], y[new] = drawn[0].to(self.device), drawn[1].to(self.device)
        return x, y

    def _front(self, x01: torch.Tensor) -> torch.Tensor:
        """The ex-model's fixed input stage: ``smooth`` Gaussian blurs, in training and prediction alike."""
        for _ in range(self.params.smooth):
            x01 = gaussian_blur3x3(x01)
        return x01

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        scores = self.model.eval()(self._front(x01))
        return scores if self.class_masks is None else self.mask_to_tasks(scores, task_ids)

    def state(self):
        return {"model": self.model, "buffer_images": self.buffer.images, "buffer_labels": self.buffer.labels}


def _preset_params(name: str, preset: EDParams) -> type[Params]:
    """``EDParams`` with the preset's values as defaults; each field keeps its bounds and type."""
    fields = {}
    for k in preset.model_fields_set:
        info = copy.deepcopy(EDParams.model_fields[k])
        info.default, info.default_factory = copy.deepcopy(getattr(preset, k)), None
        fields[k] = (info.annotation, info)
    return create_model(f"{name}_params", __base__=EDParams, **fields)


def strategy_for_preset(name: str, preset: EDParams) -> type[ExModelDistillation]:
    """The ED strategy class of one preset: its parameters default to the preset's, and what it
    consumes (experts, or data too for ``replay``) follows the preset's knowledge source."""
    from exmodel.synthesis import source_class

    src = source_class(preset.source)
    return type(name, (ExModelDistillation,), {
        "source_name": preset.source, "ex_model": src.ex_model, "exemplar_free": not src.needs_data,
        "consumes": frozenset({"expert", "data"} if src.needs_data else {"expert"}),
        "Params": _preset_params(name, preset),
        "__doc__": f"Ex-Model Distillation, preset '{name}' (knowledge source '{preset.source}').",
    })
