"""Replay: real images of the experience (the upper bound, *not* an ex-model source).

Ex-model distillation trained on a buffer of the experience's real training images ("Replay ED",
paper Fig. 3) shows how much is lost by replacing the data with synthetic or auxiliary images.
It breaks the ex-model constraint (``ex_model = False``) and needs the data (``needs_data = True``):
``generate`` samples ``n`` images of ``data`` class-balanced over the requested classes (default:
the expert's trained classes) and returns their true labels. Within a class, images are drawn
without replacement; a class with fewer images than its share contributes whole random
permutations of its images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from exmodel.data.types import ImageDataset
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.auxiliary import draw_indices
from exmodel.synthesis.base import (KnowledgeSource, SourceParams, balanced_counts, check_count, register_source,
                                    resolve_classes)


class ReplayParams(SourceParams):
    shuffle: bool = Field(True, description="return the samples in random order (else grouped by class)")


@register_source("replay")
class Replay(KnowledgeSource):
    """Real-data buffer; see the module docstring."""

    ex_model = False
    needs_data = True
    Params = ReplayParams

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_count(n)
        if data is None:
            raise ValueError("knowledge source 'replay' needs the experience's training data (data=None given)")
        p: ReplayParams = self.params  # type: ignore[assignment]
        chosen = resolve_classes(expert, classes)
        counts = balanced_counts(len(chosen), n, generator)
        parts = []
        for c, count in zip(chosen, counts.tolist(), strict=True):
            members = torch.nonzero(data.labels == c).flatten()
            if len(members) == 0:
                if count:
                    raise ValueError(f"knowledge source 'replay': the data has no image of class {c}")
                continue
            parts.append(members[draw_indices(len(members), count, generator)])
        idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        if p.shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        return data.float_images(idx), data.labels[idx].clone()
