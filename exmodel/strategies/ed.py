"""Ex-Model Distillation (Carta et al. 2021, Algorithm 1).

The learner keeps one model and a fixed-size buffer. For each expert of the stream it

1. asks a knowledge source for ⌊N/i⌋ samples of the expert's classes (model inversion, data impression,
   auxiliary data; replay and noise are the upper and lower bounds) — Eq. 5;
2. shrinks the old buffer, class-balanced, to N − ⌊N/i⌋ and adds the new samples;
3. distils for a fixed number of SGD iterations on random (augmented) buffer mini-batches, with the
   targets of Eq. 6-9 (previous model for old classes, expert for its classes) and the loss of
   Eq. 10-11 (MSE + λ_CE · CE); see ``ed_losses.py``.

In multi-task (MT) streams it is the paper's multi-head variant: old heads from the previous model,
the new head from the expert, every softmax restricted to the sample's task (``ed_multitask.py``).

Between experts it keeps only the model and the buffer; the previous model used for the targets is a
temporary copy. Each knowledge source is registered twice: ``<x>_ed_paper`` with the paper's settings
as far as the paper and its reference-code README give them, and ``<x>_ed`` with our defaults
(``ed_presets.py``).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from pydantic import Field, create_model

from exmodel.errors import ExmodelError
from exmodel.models.base import NORM_SWAPS
from exmodel.strategies.base import Params, Step, Strategy, register_strategy
from exmodel.strategies.buffer import Buffer, new_samples_per_step
from exmodel.strategies.ed_losses import NORMALIZATIONS, ed_loss, ed_targets, mix_targets
from exmodel.strategies.ed_multitask import take_expert_head, task_class_masks
from exmodel.strategies.ed_presets import DEFAULT, PAPER, SOURCES
from exmodel.strategies.ed_schedule import WeightEMA, mixup_inputs, soft_labels
from exmodel.strategies.learner import Learner
from exmodel.synthesis.base import fit_input
from exmodel.synthesis.guide import Guide
from exmodel.synthesis.priors import gaussian_blur3x3
from exmodel.training import FitSettings, make_optimizer


class EDParams(Params):
    source: str | None = None  # the knowledge source; None: the preset's (e.g. model_inversion for mi_ed*)
    source_params: dict[str, Any] = Field(default_factory=dict)  # the knowledge source's (updates the preset's)
    buffer_size: int = Field(5000, ge=1)  # N; the paper uses 5,000 (Sec. 5)
    iterations: int = Field(1000, ge=1)  # n_iter distillation steps per expert
    batch_size: int = Field(128, ge=1)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lambda_ce: float = 1.0  # λ_CE of Eq. 11
    mse_weight: float = 1.0
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # ε of the CE term (ours; the paper uses hard labels)
    normalize: str = "standardize"  # Eq. 6-7; see ed_losses.normalize_logits
    augment: bool = True  # Sec. 4.1: synthetic images are augmented during distillation too
    translate: float = 0.1
    degrees: float = 10.0
    hflip: bool = False
    jitter_morph: float = Field(0.0, ge=0, le=1)  # style jitter in distillation: P(dilation or erosion)
    jitter_gamma: float = Field(0.0, ge=0)  # ... log-range of a random gamma (with contrast stretch)
    jitter_blur: float = Field(0.0, ge=0, le=1)  # ... P(3×3 Gaussian blur); see augment.StyleJitter
    mixup: float = Field(0.0, ge=0)  # α of Beta(α, α) mixup of buffer images in distillation; 0: off (ed_schedule)
    ema: float = Field(0.0, ge=0, lt=1)  # decay of an EMA of the student's weights within a step; 0: off
    lr_schedule: str = "constant"  # or "cosine": the distillation lr decays to 0 over each step's iterations
    fresh: bool = False  # generative / auxiliary sources: redraw the current expert's samples in every batch
    smooth: int = Field(0, ge=0)  # passes of a 3×3 Gaussian blur on distillation inputs (hides pixel texture)
    arch: str | None = None  # the ex-model's architecture; default: the first expert's
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    # The ex-model's BatchNorm layers: None as its architecture has them, "batch" keeps them, "layer"
    # makes them per-sample, "none" drops them (BN running statistics learnt on synthetic images misjudge
    # real ones; see models.base.replace_batchnorm). "auto": "none", except on multi-task streams with
    # expert_head, where the ex-model starts as the first expert (real-data statistics) and keeps them.
    norm: str | None = None
    quantize_buffer: bool = True  # keep the buffer as uint8 images (4× smaller than float32)
    expert_head: bool = True  # MT streams: the new task's head (and, first, the network) from the expert
    # Held-out synthetic samples per expert for the agreement report of ``consolidate`` (drawn with the
    # source's ``redraw`` after the buffer's samples, never trained on); 0: none (``exmodel run``).
    check_samples: int = Field(0, ge=0)


LR_SCHEDULES = ("constant", "cosine")


class ExModelDistillation(Strategy):
    source_name: ClassVar[str] = "model_inversion"
    Params: ClassVar[type[Params]] = EDParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from exmodel.synthesis import build_source

        p = self.params
        if p.normalize not in NORMALIZATIONS:
            raise ExmodelError(f"{self.type_name}: normalize must be one of {', '.join(NORMALIZATIONS)}")
        if p.norm is not None and p.norm not in (*NORM_SWAPS, "auto"):
            raise ExmodelError(f"{self.type_name}: norm must be one of {', '.join(NORM_SWAPS)}, auto")
        if p.lr_schedule not in LR_SCHEDULES:
            raise ExmodelError(f"{self.type_name}: lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
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
        torch.manual_seed(self.seed)
        info = self.info
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
        p = self.params
        model = self.model.train()
        opt = make_optimizer(model.parameters(), FitSettings(lr=p.lr, optimizer=p.optimizer, momentum=p.momentum,
                                                             weight_decay=p.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, p.iterations) if p.lr_schedule == "cosine" else None
        ema = WeightEMA(model, p.ema) if p.ema else None
        task = progress.add(f"{self.type_name} distil step {index}", total=p.iterations) if progress else None
        prev_classes, expert_classes = prev_classes.to(self.device), expert_classes.to(self.device)
        n = len(self.buffer)
        for _ in range(p.iterations):
            idx = torch.randint(n, (min(p.batch_size, n),), generator=self.generator)
            x = self.buffer.float_images(idx).to(self.device)
            y = self.buffer.labels[idx].to(self.device)
            if p.fresh:
                x, y = self._redraw(x, y, idx >= n - n_new)
            if self.augment is not None:
                with torch.no_grad():
                    x = self.augment(x)
            if self.jitter is not None:
                x = self.jitter(x)
            mixed = mixup_inputs(x, p.mixup, self.generator) if p.mixup else None
            if mixed is not None:
                x = mixed[0]
            with torch.no_grad():
                t_exp = expert.global_logits(fit_input(x, expert.card.input_shape), fill=float("nan"))
                t_prev = prev(self._front(x)) if prev is not None else None
                allowed = self.class_masks[y] if self.class_masks is not None else None
                target = ed_targets(t_prev, t_exp, y, prev_classes, expert_classes, p.normalize, allowed)
                label = y
                if mixed is not None:
                    _, perm, lam = mixed
                    y_b = y[perm]
                    target = mix_targets(target, ed_targets(t_prev, t_exp, y_b, prev_classes, expert_classes,
                                                            p.normalize), lam)
                    label = soft_labels(y, perm, lam, self.info.num_classes)
            loss, _, _ = ed_loss(model(self._front(x)), target, label, p.lambda_ce, p.mse_weight, p.label_smoothing,
                                 allowed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update(model)
            if task is not None:
                progress.advance(task)
        if ema is not None:
            ema.copy_to(model)
        if task is not None:
            progress.remove(task)
        model.eval()

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


def _preset_params(name: str, preset: dict[str, Any]) -> type[Params]:
    # Each preset value replaces only the default: the field keeps its bounds (ge/le) and type.
    fields = {}
    for k, v in preset.items():
        info = copy.deepcopy(EDParams.model_fields[k])
        info.default, info.default_factory = copy.deepcopy(v), None
        fields[k] = (info.annotation, info)
    return create_model(f"{name}_params", __base__=EDParams, **fields)


def _register_all() -> None:
    from exmodel.synthesis import source_class

    for short, source in SOURCES.items():
        for suffix, presets in (("_paper", PAPER), ("", DEFAULT)):
            name = f"{short}_ed{suffix}"
            src = source_class(source)
            cls = type(name, (ExModelDistillation,), {
                "source_name": source, "ex_model": src.ex_model,
                "consumes": frozenset({"expert", "data"} if src.needs_data else {"expert"}),
                "Params": _preset_params(name, presets[short]),
                "__doc__": f"Ex-Model Distillation with the '{source}' knowledge source ({suffix[1:] or 'default'} settings).",
            })
            register_strategy(name)(cls)


_register_all()
