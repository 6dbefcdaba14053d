"""``delegator``: SKD's knowledge delegator as a knowledge source of Ex-Model Distillation.

The same imitate & explore training that SKD runs against its previous model
(:mod:`exmodel.synthesis.delegator`) runs here against a received expert: a delegator and a fresh
clone of the expert learn from the expert alone, and the delegator then draws the images the
ex-model learns from. Each image is labelled with the expert's prediction among the requested
classes. The clone is the expert's own architecture when it is a registered one (ψ compares
penultimate features); for an imported program it is ``student_arch`` compared on logits. Experts
without BatchNorm simply have no ``R_feature`` term. Fresh images cost one generator pass
(:meth:`redraw`), so ED can draw new ones at every distillation step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from exmodel.data.types import ImageDataset
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.base import (KnowledgeSource, SourceParams, check_count, expert_device, frozen_expert,
                                    predict_among, register_source, resolve_classes, seeded_global_rng)
from exmodel.synthesis.delegator import DelegatorGenerator, DelegatorSettings, clone_of, train_delegator


class DelegatorParams(SourceParams):
    epochs: int = Field(150, ge=1, description="imitate & explore epochs (5 + 1 steps each)")
    batch_size: int = Field(64, ge=2)
    z_dim: int = Field(100, ge=1)
    width: int = Field(16, ge=1, description="channels of the generator's last hidden layer")
    helper_bn: bool = True
    lam: float = Field(1.0, ge=0, description="λ of the exploration term (SKD Eq. 8)")
    w_cat: float = Field(1.0, ge=0)
    w_div: float = Field(1.0, ge=0)
    w_feature: float = Field(1.0, ge=0)
    student_arch: str = Field("lenet_bn", description="the clone of an expert whose architecture is not registered")


@register_source("delegator")
class DelegatorSource(KnowledgeSource):
    Params = DelegatorParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._kept: tuple[Expert, list[int], DelegatorGenerator] | None = None

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *, classes: Sequence[int] | None = None,
                 data: ImageDataset | None = None, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_count(n)
        p = self.params
        chosen = resolve_classes(expert, classes)
        device = expert_device(expert)
        with frozen_expert(expert), seeded_global_rng(generator, device):
            student, compare = clone_of(expert, p.student_arch)
            delegator = DelegatorGenerator(expert.card.input_shape, p.z_dim, p.width, p.helper_bn).to(device)
            settings = DelegatorSettings(epochs=p.epochs, batch_size=p.batch_size, lam=p.lam, w_cat=p.w_cat,
                                         w_div=p.w_div, w_feature=p.w_feature)
            train_delegator(delegator, expert, student.to(device), settings, generator, classes=chosen,
                            compare=compare, progress=progress, description=f"delegator for {expert.card.name}")
        self._kept = (expert, chosen, delegator)
        return self._draw(n, generator)

    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        expert, chosen, delegator = self._kept  # type: ignore[misc]
        mean = torch.tensor(expert.card.normalization.mean).view(1, -1, 1, 1)
        std = torch.tensor(expert.card.normalization.std).view(1, -1, 1, 1)
        x01 = torch.cat([(delegator.sample(min(512, n - i), generator).cpu() * std + mean).clamp(0, 1)
                         for i in range(0, n, 512)]) if n else torch.empty((0, *expert.card.input_shape))
        with frozen_expert(expert):
            y = predict_among(expert, x01, chosen) if n else torch.empty(0, dtype=torch.long)
        return x01, y

    def redraw(self, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._kept is None:
            return None
        return self._draw(len(y), generator)

    def release(self) -> None:
        self._kept = None
