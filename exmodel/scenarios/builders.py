"""Scenario builders: pure, seeded functions from a dataset to a :class:`Stream`.

* ``nc`` — class-incremental (New Classes): classes are split into ``n_experiences`` disjoint groups
  (seeded order unless given); a single head over all classes, no task label at test time.
* ``mt`` — multi-task: the same class split, but each experience is a task with its own head and the
  task label is known at test time.
* ``ni`` — New Instances: every experience has all classes; the training (and test) samples are split
  into disjoint, class-stratified shards.
* ``joint`` — one experience with all the data (the offline upper bound / plain distillation setting).

Each experience keeps its own private test split: the test samples of its own classes (nc/mt) or its
own shard (ni), so the stream's test set is the union of the experiences' test sets (Eq. 2 of the
ex-model paper).
"""

from __future__ import annotations

import torch

from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import ConfigError
from exmodel.scenarios.stream import Experience, Stream

KINDS = ("nc", "ni", "mt", "joint")


def _class_groups(num_classes: int, n_experiences: int, order: list[int] | None, seed: int, shuffle: bool,
                  first_size: int | None) -> list[list[int]]:
    if order is None:
        order = list(range(num_classes))
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = [order[i] for i in torch.randperm(num_classes, generator=g).tolist()]
    if sorted(order) != list(range(num_classes)):
        raise ConfigError(f"scenario.class_order must be a permutation of 0..{num_classes - 1}, got {order}")
    if first_size is not None:
        rest = num_classes - first_size
        if n_experiences < 2 or rest % (n_experiences - 1):
            raise ConfigError(f"cannot split {rest} classes after the first {first_size} into {n_experiences - 1} experiences")
        sizes = [first_size] + [rest // (n_experiences - 1)] * (n_experiences - 1)
    else:
        if num_classes % n_experiences:
            raise ConfigError(f"{num_classes} classes cannot be split evenly into {n_experiences} experiences")
        sizes = [num_classes // n_experiences] * n_experiences
    groups, start = [], 0
    for s in sizes:
        groups.append(order[start:start + s])
        start += s
    return groups


def _select_classes(ds: ImageDataset, classes: list[int]) -> ImageDataset:
    mask = torch.isin(ds.labels, torch.tensor(classes))
    return ds.subset(mask.nonzero().squeeze(1))


def _stratified_shards(ds: ImageDataset, n: int, seed: int) -> list[ImageDataset]:
    g = torch.Generator().manual_seed(seed)
    shards: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for c in torch.unique(ds.labels).tolist():
        idx = (ds.labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        for k, part in enumerate(torch.tensor_split(idx, n)):
            shards[k].append(part)
    return [ds.subset(torch.sort(torch.cat(s)).values) for s in shards]


def _per_class(ds: ImageDataset, n: int | None, g: torch.Generator) -> ImageDataset:
    if n is None:
        return ds
    keep = []
    for c in range(ds.num_classes):
        idx = (ds.labels == c).nonzero().squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return ds.subset(torch.sort(torch.cat(keep)).values)


def subsample_per_class(data: DatasetSplits, train: int | None, test: int | None, seed: int) -> DatasetSplits:
    """At most ``train``/``test`` samples per class, chosen with ``seed`` (None keeps all)."""
    g = torch.Generator().manual_seed(10_007 + seed)
    return DatasetSplits(_per_class(data.train, train, g), _per_class(data.test, test, g))


def validation_split(data: DatasetSplits, fraction: float, seed: int) -> DatasetSplits:
    """Carve a class-stratified validation set out of the training data; it replaces the test set."""
    g = torch.Generator().manual_seed(20_011 + seed)
    train, val = [], []
    for c in torch.unique(data.train.labels).tolist():
        idx = (data.train.labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, round(fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return DatasetSplits(data.train.subset(torch.sort(torch.cat(train)).values),
                         data.train.subset(torch.sort(torch.cat(val)).values))


def build_stream(data: DatasetSplits, kind: str, n_experiences: int, seed: int, *, class_order: list[int] | None = None,
                 shuffle_classes: bool = True, first_experience_classes: int | None = None,
                 name: str | None = None) -> Stream:
    """Split ``data`` into a stream. Same arguments (and seed) give the same stream."""
    if kind not in KINDS:
        raise ConfigError(f"scenario.kind '{kind}' is not one of {', '.join(KINDS)}")
    train, test = data.train, data.test
    k = train.num_classes
    if kind == "joint":
        n_experiences = 1
    if n_experiences < 1:
        raise ConfigError("scenario.n_experiences must be ≥ 1")
    exps: list[Experience] = []
    if kind in ("nc", "mt", "joint"):
        groups = _class_groups(k, n_experiences, class_order, seed, shuffle_classes and kind != "joint",
                               first_experience_classes if kind != "joint" else None)
        for i, g in enumerate(groups):
            exps.append(Experience(i, tuple(g), i, _select_classes(train, g), _select_classes(test, g)))
    else:  # ni
        tr = _stratified_shards(train, n_experiences, seed)
        te = _stratified_shards(test, n_experiences, seed + 1)
        for i in range(n_experiences):
            exps.append(Experience(i, tuple(range(k)), i, tr[i], te[i]))
    return Stream(name=name or f"{train.name}_{kind}", kind=kind, dataset=train.name, num_classes=k,
                  class_names=train.class_names, input_shape=train.input_shape, mean=train.mean, std=train.std,
                  experiences=tuple(exps), seed=seed)
