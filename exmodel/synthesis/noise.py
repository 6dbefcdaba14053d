"""Noise: Gaussian noise images labelled by the expert (a lower bound for the other sources).

Each pixel is ``0.5 + std·N(0, 1)`` clamped to [0, 1] (drawn from the source's generator); the label
is the expert's prediction among the requested classes (default: its trained classes). Whatever a
distilled learner gets from these images is what the expert's behaviour on structureless input
carries; a useful source must beat it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from exmodel.data.types import ImageDataset
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.base import (KnowledgeSource, SourceParams, check_count, num_batches, predict_among,
                                    register_source, resolve_classes)

NOISE_MEAN = 0.5  # mid-grey: the centre of the valid pixel range


class NoiseParams(SourceParams):
    std: float = Field(0.25, gt=0, description="standard deviation of the pixel noise (in [0, 1] units)")
    batch_size: int = Field(256, ge=1, description="images labelled per expert forward pass")


@register_source("noise")
class GaussianNoise(KnowledgeSource):
    """See the module docstring."""

    Params = NoiseParams

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_count(n)
        p: NoiseParams = self.params  # type: ignore[assignment]
        chosen = resolve_classes(expert, classes)
        x01 = (NOISE_MEAN + p.std * torch.randn((n, *expert.card.input_shape), generator=generator)).clamp_(0.0, 1.0)
        task = progress.add("noise", total=num_batches(n, p.batch_size)) if progress else None
        y = predict_among(expert, x01, chosen, p.batch_size, progress, task)
        if task is not None:
            progress.remove(task)  # type: ignore[union-attr]
        return x01, y
