"""Ex-Model Distillation's parameters: one typed object per run (presets in ``presets.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from exmodel.loop import LRSchedule, Optimizer
from exmodel.strategies.base import Params


class EDParams(Params):
    source: str | None = None  # the knowledge source; None: the preset's (e.g. model_inversion for mi_ed*)
    source_params: dict[str, Any] = Field(default_factory=dict)  # the knowledge source's (updates the preset's)
    buffer_size: int = Field(5000, ge=1)  # N; the paper uses 5,000 (Sec. 5)
    iterations: int = Field(1000, ge=1)  # n_iter distillation steps per expert
    batch_size: int = Field(128, ge=1)
    optimizer: Optimizer = "sgd"  # sgd, adam or adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lambda_ce: float = 1.0  # λ_CE of Eq. 11
    mse_weight: float = 1.0
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # ε of the CE term (ours; the paper uses hard labels)
    normalize: Literal["standardize", "l2", "none"] = "standardize"  # Eq. 6-7; see exmodel.logits.normalize_logits
    augment: bool = True  # Sec. 4.1: synthetic images are augmented during distillation too
    translate: float = 0.1
    degrees: float = 10.0
    hflip: bool = False
    jitter_morph: float = Field(0.0, ge=0, le=1)  # style jitter in distillation: P(dilation or erosion)
    jitter_gamma: float = Field(0.0, ge=0)  # ... log-range of a random gamma (with contrast stretch)
    jitter_blur: float = Field(0.0, ge=0, le=1)  # ... P(3×3 Gaussian blur); see augment.StyleJitter
    mixup: float = Field(0.0, ge=0)  # α of Beta(α, α) mixup of buffer images in distillation; 0: off (exmodel.loop)
    ema: float = Field(0.0, ge=0, lt=1)  # decay of an EMA of the student's weights within a step; 0: off
    lr_schedule: LRSchedule = "constant"  # "cosine": the distillation lr decays to 0 over each step's iterations
    fresh: bool = False  # generative / auxiliary sources: redraw the current expert's samples in every batch
    smooth: int = Field(0, ge=0)  # passes of a 3×3 Gaussian blur on distillation inputs (hides pixel texture)
    arch: str | None = None  # the ex-model's architecture; default: the first expert's
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    # The ex-model's BatchNorm layers: None as its architecture has them, "batch" keeps them, "layer"
    # makes them per-sample, "none" drops them (BN running statistics learnt on synthetic images misjudge
    # real ones; see models.base.replace_batchnorm). "auto": "none", except on multi-task streams with
    # expert_head, where the ex-model starts as the first expert (real-data statistics) and keeps them.
    norm: Literal["batch", "layer", "none", "auto"] | None = None
    quantize_buffer: bool = True  # keep the buffer as uint8 images (4× smaller than float32)
    expert_head: bool = True  # MT streams: the new task's head (and, first, the network) from the expert
    # Held-out synthetic samples per expert for the agreement report of ``consolidate`` (drawn with the
    # source's ``redraw`` after the buffer's samples, never trained on); 0: none (``exmodel run``).
    check_samples: int = Field(0, ge=0)
