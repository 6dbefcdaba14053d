"""Auxiliary data (paper Sec. 4): images of another dataset, labelled by the expert.

No optimisation at all: draw ``n`` images of an open dataset (the paper uses Fashion-MNIST for the
MNIST scenarios and ImageNet for CIFAR-10 / CORe50) without replacement and label each one with the
expert's prediction, ``argmax f(x)`` restricted to the requested classes (by default the classes the
expert was trained on), mapped to global class ids.

The dataset is read with :func:`exmodel.data.registry.load_dataset` from the source's ``data_dir``
(given at construction, ``build_source(..., data_dir=...)``; strategies pass the run's data dir).
``data_dir=None`` means ``$EXMODEL_DATA_DIR`` or, if unset, the subsets embedded in the package
(MNIST and Fashion-MNIST only). The images must have the expert's input shape; nothing is resized.

If ``n`` exceeds the dataset, whole random permutations of it are concatenated (each image then
appears ``n // N`` or ``n // N + 1`` times).

``balance=True`` (our improvement, off in the paper's configuration): predictions on out-of-domain
images are often dominated by one class, so the distillation buffer ends up with few samples of the
others. We then label a larger pool of ``pool_factor·n`` images and keep a class-balanced subset by
predicted label (the pool is capped at the dataset size unless ``n`` itself is larger); classes with
too few pool images are topped up with the remaining pool images.

:meth:`AuxiliaryData.redraw` (ED's ``fresh`` option) labels the whole dataset once per expert and then
draws, for each requested class, a random image the expert assigns to that class (any image when the
expert assigns none to it), so a distillation step sees the whole auxiliary dataset rather than the
buffer's share of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from exmodel.data.registry import load_dataset
from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.base import (KnowledgeSource, SourceParams, balanced_counts, check_count, num_batches,
                                    predict_among, register_source, resolve_classes)


class AuxiliaryParams(SourceParams):
    dataset: str = Field("fashion_mnist", description="dataset name accepted by load_dataset")
    split: Literal["train", "test"] = Field("train", description="which split to draw images from")
    batch_size: int = Field(256, ge=1, description="images labelled per expert forward pass")
    balance: bool = Field(False, description="keep a class-balanced subset of a larger pool (not in the paper)")
    pool_factor: int = Field(4, ge=1, description="pool size = pool_factor × n when balance is on")


def draw_indices(size: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices into ``range(size)``: distinct while ``n <= size``, otherwise concatenated permutations."""
    if size == 0:
        raise ValueError("cannot draw from an empty dataset")
    parts = [torch.randperm(size, generator=generator) for _ in range(num_batches(n, size))]
    return torch.cat(parts)[:n] if parts else torch.empty(0, dtype=torch.long)


def balanced_subset(labels: torch.Tensor, classes: Sequence[int], n: int, generator: torch.Generator) -> torch.Tensor:
    """Positions of ``n`` entries of ``labels`` (in their original order) spread as evenly as possible
    over ``classes``: each class keeps its first ``quota`` entries; if some class has fewer, the
    shortfall is filled with the earliest entries not yet taken."""
    if n > len(labels):
        raise ValueError(f"balanced_subset: cannot pick {n} of {len(labels)} entries")
    quotas = balanced_counts(len(classes), n, generator)
    taken = torch.zeros(len(labels), dtype=torch.bool)
    for c, quota in zip(classes, quotas.tolist(), strict=True):
        pos = torch.nonzero(labels == c).flatten()[:quota]
        taken[pos] = True
    short = n - int(taken.sum())
    if short > 0:
        rest = torch.nonzero(~taken).flatten()[:short]
        taken[rest] = True
    return torch.nonzero(taken).flatten()


@register_source("auxiliary")
class AuxiliaryData(KnowledgeSource):
    """Paper Sec. 4, "Auxiliary Data"; see the module docstring."""

    Params = AuxiliaryParams
    _kept: tuple | None = None  # (dataset, expert, classes) of the last generate(), for redraw()
    _pool: dict | None = None  # class -> indices of the images the expert assigns to it
    _pool_labels: torch.Tensor | None = None  # the expert's label of every image

    def dataset(self) -> ImageDataset:
        p: AuxiliaryParams = self.params  # type: ignore[assignment]
        splits = load_dataset(p.dataset, self.data_dir)
        return splits.train if p.split == "train" else splits.test

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_count(n)
        p: AuxiliaryParams = self.params  # type: ignore[assignment]
        chosen = resolve_classes(expert, classes)
        aux = self.dataset()
        expected = tuple(expert.card.input_shape)
        if tuple(aux.input_shape) != expected:
            raise ConfigError(
                f"knowledge source 'auxiliary': dataset '{p.dataset}' has images shaped {tuple(aux.input_shape)} "
                f"but expert '{expert.card.name}' expects {expected}; choose an auxiliary dataset of that shape"
            )
        # The pool never repeats images unless n itself exceeds the dataset.
        pool = max(n, min(p.pool_factor * n, len(aux))) if p.balance else n
        idx = draw_indices(len(aux), pool, generator)
        x01 = aux.float_images(idx)
        task = progress.add(f"auxiliary data ({p.dataset})", total=num_batches(pool, p.batch_size)) if progress else None
        y = predict_among(expert, x01, chosen, p.batch_size, progress, task)
        if task is not None:
            progress.remove(task)  # type: ignore[union-attr]
        if p.balance:
            keep = balanced_subset(y, chosen, n, generator)
            x01, y = x01[keep], y[keep]
        self._kept = (aux, expert, chosen)
        self._pool = None
        return x01, y

    def redraw(self, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._kept is None:
            return None
        aux, expert, chosen = self._kept
        if self._pool is None:  # the expert's label of every image, once per expert
            labels = torch.cat([predict_among(expert, aux.float_images(torch.arange(i, min(i + 4096, len(aux)))),
                                              chosen, self.params.batch_size)  # type: ignore[attr-defined]
                                for i in range(0, len(aux), 4096)])
            self._pool = {c: torch.nonzero(labels == c).flatten() for c in chosen}
            self._pool_labels = labels
        idx = torch.randint(len(aux), (len(y),), generator=generator)
        y = y.cpu()
        for c, members in self._pool.items():
            m = y == c
            if m.any() and len(members):
                idx[m] = members[torch.randint(len(members), (int(m.sum()),), generator=generator)]
        return aux.float_images(idx), self._pool_labels[idx]

    def release(self) -> None:
        self._kept, self._pool, self._pool_labels = None, None, None
