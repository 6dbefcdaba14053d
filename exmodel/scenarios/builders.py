"""Scenario builders: pure, seeded functions from a dataset to a :class:`Stream`.

* ``nc`` — class-incremental (New Classes): classes are split into ``n_experiences`` disjoint groups
  (seeded order unless given); a single head over all classes, no task label at test time.
* ``mt`` — multi-task: the same class split, but each experience is a task with its own head and the
  task label is known at test time.
* ``ni`` — New Instances: every experience has all classes. By default (``ni_split="stratified"``) the
  training and test samples are split into disjoint, class-stratified shards. ``ni_split="groups"``
  follows the NI protocol of CORe50 instead: experiences are made of whole groups of the training set
  (``ImageDataset.groups``, CORe50's recording sessions), see :func:`build_stream` for the test set.
* ``cil`` — class-incremental learning from data: the same single head and no task label as ``nc``,
  with the field's protocols (a base task of half the classes, or equal tasks from scratch), see
  :mod:`exmodel.scenarios.cil`;
* ``joint`` — one experience with all the data (the offline upper bound / plain distillation setting).

Each experience keeps its own private test split: the test samples of its own classes (nc/mt) or its
own shard (ni), so the stream's test set is the union of the experiences' test sets (Eq. 2 of the
ex-model paper).
"""

from __future__ import annotations

import torch

from exmodel.data.core50 import split_by_groups
from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import ConfigError
from exmodel.scenarios.cil import CILProtocol, cil_groups
from exmodel.scenarios.cil import class_order as _order
from exmodel.scenarios.stream import Experience, Stream

KINDS = ("nc", "ni", "mt", "joint", "cil")
NI_SPLITS = ("stratified", "groups")


def _class_groups(num_classes: int, n_experiences: int, order: list[int], first_size: int | None) -> list[list[int]]:
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
    """``n`` disjoint shards; each class is shuffled and dealt into ``n`` nearly equal runs.

    The shards that get a class's left-over samples rotate from class to class, so shard sizes differ
    by at most one even when classes have fewer than ``n`` samples (the last shards are never left
    empty). When every class divides evenly this is a plain split into equal consecutive runs.
    """
    g = torch.Generator().manual_seed(seed)
    shards: list[list[torch.Tensor]] = [[] for _ in range(n)]
    offset = 0  # first shard to receive one of the current class's left-over samples
    for c in torch.unique(ds.labels).tolist():
        idx = (ds.labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        base, extra = divmod(len(idx), n)
        sizes = [base + int((k - offset) % n < extra) for k in range(n)]
        for k, part in enumerate(torch.split(idx, sizes)):
            shards[k].append(part)
        offset = (offset + extra) % n
    return [ds.subset(torch.sort(torch.cat(s)).values) for s in shards]


def _group_shards(ds: ImageDataset, n: int) -> list[ImageDataset]:
    """One experience per group of ``ds`` in ascending group order, merged or cut to reach ``n``
    (:func:`exmodel.data.core50.split_by_groups`, cutting within each class)."""
    if ds.groups is None:
        raise ConfigError(f"scenario.ni_split 'groups' needs a dataset with per-sample groups (e.g. core50 "
                          f"sessions); '{ds.name}' has none")
    order = torch.unique(ds.groups).tolist()
    return [ds.subset(b) for b in split_by_groups(ds.groups, ds.labels, order, n)]


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
                 name: str | None = None, ni_split: str = "stratified", class_order_seed: int | None = None,
                 cil: CILProtocol | None = None) -> Stream:
    """Split ``data`` into a stream. Same arguments (and seed) give the same stream.

    New Instances by groups (``ni_split="groups"``, CORe50-NI). The training experiences follow the
    groups; the test set is common to all of them (CORe50 tests every NI experience on sessions 3, 7
    and 10). Eq. 2 pools the experiences' test sets, i.e. their union, and the union of copies of one
    shared set is that set once. So instead of handing every experience the whole test set (which
    would count each test sample ``T`` times in the pooled counts and confusion matrix, and evaluate
    it ``T`` times per step), each experience gets a disjoint class-stratified shard of the common test
    set, exactly as in the stratified split. The shards' union is the test set, each test sample is
    counted once in the stream accuracy, one evaluation pass per step costs one pass over the test set,
    and the accuracy matrix stays ``T x T``. Since every shard is drawn from the same common test set,
    ``R[i, j]`` for every ``j`` estimates the same quantity (accuracy on the common test set after
    step ``i``); the ``j`` index does not refer to test data of experience ``j``'s own group.
    """
    if kind not in KINDS:
        raise ConfigError(f"scenario.kind '{kind}' is not one of {', '.join(KINDS)}")
    if ni_split not in NI_SPLITS:
        raise ConfigError(f"scenario.ni_split '{ni_split}' is not one of {', '.join(NI_SPLITS)}")
    if ni_split != "stratified" and kind != "ni":
        raise ConfigError(f"scenario.ni_split '{ni_split}' applies only to kind 'ni', not '{kind}'")
    train, test = data.train, data.test
    k = train.num_classes
    if kind == "joint":
        n_experiences = 1
    if n_experiences < 1:
        raise ConfigError("scenario.n_experiences must be ≥ 1")
    exps: list[Experience] = []
    if kind != "cil" and cil not in (None, CILProtocol()):
        raise ConfigError(f"scenario.protocol, n_tasks, base_classes and class_groups apply to kind 'cil' only, "
                          f"not '{kind}'")
    if kind in ("nc", "mt", "joint", "cil"):
        order = _order(k, class_order, class_order_seed, seed, shuffle_classes and kind != "joint")
        if kind == "cil":
            groups = cil_groups(k, cil or CILProtocol(), order)
        else:
            groups = _class_groups(k, n_experiences, order, first_experience_classes if kind != "joint" else None)
        for i, g in enumerate(groups):
            exps.append(Experience(i, tuple(g), i, _select_classes(train, g), _select_classes(test, g)))
    else:  # ni
        if ni_split == "groups":
            tr = _group_shards(train, n_experiences)
        else:
            tr = _stratified_shards(train, n_experiences, seed)
        te = _stratified_shards(test, n_experiences, seed + 1)  # also for groups: see the docstring
        for i in range(n_experiences):
            exps.append(Experience(i, tuple(range(k)), i, tr[i], te[i]))
    return Stream(name=name or f"{train.name}_{kind}", kind=kind, dataset=train.name, num_classes=k,
                  class_names=train.class_names, input_shape=train.input_shape, mean=train.mean, std=train.std,
                  experiences=tuple(exps), seed=seed)
