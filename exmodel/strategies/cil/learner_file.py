"""A trained M²KD learner in one safetensors file: its network, its packed masks and each step's
small tensors — everything needed to continue the stream or rebuild any earlier step's model.

The file holds tensors only, plus a JSON description in the safetensors metadata (the strategy, its
parameters, the stream it learnt, the classes of each step). Nothing is unpickled: the description
is validated (a registered M²KD strategy, bounded shapes), the network is built from it, every
tensor is checked against what that network and its masks must hold, and the masks against the
weights (:meth:`~exmodel.strategies.cil.masks.StepMasks.check_against`) before the learner is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors

from exmodel import limits
from exmodel.errors import ExmodelError
from exmodel.experts.weights_file import read_described
from exmodel.fileio import atomic_write_bytes
from exmodel.strategies.base import StreamInfo, build_strategy, strategy_class
from exmodel.strategies.cil.masks import unpack_owners

FORMAT, VERSION = "exmodel-m2kd-learner", 1
MAX_SIDE, MAX_CHANNELS, MAX_STEPS = 1024, 16, 255  # owners are one byte


class LearnerFileError(ExmodelError):
    pass


def save_learner(strategy, path: str | os.PathLike) -> Path:
    """Write ``strategy`` (an ``m2kd`` form, after at least one step) to ``path`` atomically."""
    from exmodel.strategies.m2kd import M2KD

    if not isinstance(strategy, M2KD):
        raise LearnerFileError(f"only m2kd learners are saved this way, not {strategy.type_name}")
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in strategy.model.state_dict().items()}
    masks = strategy.masks
    if masks is not None:
        tensors["masks/owners"] = masks.state()["owners"]
        for k, saved in enumerate(masks.saved, start=1):
            tensors.update({f"step{k}/{name}": v.detach().cpu().contiguous() for name, v in saved.items()})
    if strategy.delegator is not None:
        tensors.update({f"delegator/{k}": v.detach().cpu().contiguous() for k, v in strategy.delegator.state_dict().items()})
    for k, snap in strategy.snapshots.items():
        tensors.update({f"snapshot{k}/{name}": v.detach().cpu().contiguous() for name, v in snap.state_dict().items()})
    meta = {"format": FORMAT, "version": VERSION, "strategy": strategy.type_name,
            "params": strategy.params.model_dump(mode="json"), "info": dataclasses.asdict(strategy.info),
            "seed": strategy.seed, "groups": [list(g) for g in strategy.groups], "seen": list(strategy.seen),
            "steps": len(strategy.groups), "mask_names": masks.names if masks is not None else [],
            "snapshots": sorted(strategy.snapshots), "class_names": list(strategy.class_names)}
    return atomic_write_bytes(path, save_tensors(tensors, metadata={"exmodel": json.dumps(meta)}))


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return read_described(path, FORMAT, VERSION, "an exmodel M²KD learner", LearnerFileError)


def _info(meta: dict, source: str) -> StreamInfo:
    try:
        info = StreamInfo(**{**meta["info"], "input_shape": tuple(meta["info"]["input_shape"]),
                             "mean": tuple(meta["info"]["mean"]), "std": tuple(meta["info"]["std"]),
                             "task_classes": tuple(tuple(int(c) for c in g) for g in meta["info"]["task_classes"])})
        c, h, w = (int(v) for v in info.input_shape)
        k = int(info.num_classes)
    except (KeyError, TypeError, ValueError):
        raise LearnerFileError(f"{source}: the stream description is malformed") from None
    if not (1 <= c <= MAX_CHANNELS and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and 1 <= k <= limits.max_classes()
            and 1 <= int(info.n_experiences) <= MAX_STEPS):
        raise LearnerFileError(f"{source}: input shape {info.input_shape}, {k} classes or {info.n_experiences} "
                               f"steps out of bounds")
    return info


def load_learner(path: str | os.PathLike):
    """The M²KD learner saved at ``path``, checked; a :class:`LearnerFileError` (one line) otherwise."""
    from exmodel.strategies.m2kd import M2KD

    path = Path(path)
    source = str(path)
    meta, tensors = _read(path)
    name = meta.get("strategy")
    try:
        cls = strategy_class(name)
    except Exception:
        cls = None
    if cls is None or not issubclass(cls, M2KD):
        raise LearnerFileError(f"{source}: strategy {name!r} is not an m2kd form")
    info = _info(meta, source)
    try:
        strategy = build_strategy(name, meta["params"], info, int(meta["seed"]))
    except ExmodelError as exc:
        raise LearnerFileError(f"{source}: {exc}") from None
    steps = int(meta.get("steps", 0))
    groups = [tuple(int(c) for c in g) for g in meta.get("groups", [])]
    if len(groups) != steps or not 1 <= steps <= info.n_experiences:
        raise LearnerFileError(f"{source}: {steps} steps recorded for {len(groups)} class groups "
                               f"and a stream of {info.n_experiences}")
    model_state = strategy.model.state_dict()
    _load_into(strategy.model, {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
               model_state, source, "the network")
    masks = strategy.masks
    if masks is not None:
        if list(meta.get("mask_names", [])) != masks.names:
            raise LearnerFileError(f"{source}: masks do not match the network: they cover "
                                   f"{meta.get('mask_names')}, the network's prunable weights are {masks.names}")
        if "masks/owners" not in tensors:
            raise LearnerFileError(f"{source}: no masks/owners tensor")
        try:
            owners = unpack_owners(tensors["masks/owners"], [tuple(masks.owner[n].shape) for n in masks.names], steps)
        except ExmodelError as exc:
            raise LearnerFileError(f"{source}: masks do not match the weights: {exc}") from None
        masks.owner = dict(zip(masks.names, owners))
        unmasked = {k: v for k, v in model_state.items() if k not in set(masks.names)}
        for k in range(1, steps + 1):
            saved = {key[len(f"step{k}/"):]: v for key, v in tensors.items() if key.startswith(f"step{k}/")}
            _check_same(saved, unmasked, source, f"step {k}'s saved tensors")
            masks.saved.append(saved)
        try:
            masks.check_against(strategy.model)
        except ExmodelError as exc:
            raise LearnerFileError(f"{source}: {exc}") from None
    if strategy.delegator is not None:
        _load_into(strategy.delegator, {k[len("delegator/"):]: v for k, v in tensors.items() if k.startswith("delegator/")},
                   strategy.delegator.state_dict(), source, "the delegator")
    for k in meta.get("snapshots", []):
        snap = strategy.frozen_copy()
        _load_into(snap, {key[len(f"snapshot{k}/"):]: v for key, v in tensors.items()
                          if key.startswith(f"snapshot{k}/")}, model_state, source, f"snapshot {k}")
        strategy.snapshots[int(k)] = snap
    strategy.groups = groups
    strategy.seen = [int(c) for c in meta.get("seen", [])]
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) == info.num_classes and all(isinstance(n, str) for n in names)):
        raise LearnerFileError(f"{source}: class_names must list {info.num_classes} names")
    strategy.class_names = names
    return strategy


def _check_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, what: str) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [k for k in sorted(set(got) & set(expected))
             if got[k].shape != expected[k].shape or got[k].dtype != expected[k].dtype]
    if missing or extra or wrong:
        parts = [f"missing {', '.join(missing[:3])}" if missing else "", f"unexpected {', '.join(extra[:3])}" if extra else "",
                 f"{wrong[0]} is {tuple(got[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}" if wrong else ""]
        raise LearnerFileError(f"{source}: {what} do not fit the network ({'; '.join(p for p in parts if p)})")


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
               source: str, what: str) -> None:
    _check_same(state, expected, source, f"the tensors of {what}")
    module.load_state_dict(state)


def describe(strategy) -> dict[str, Any]:
    """What a saved learner holds: its steps and, per masked layer, the weights each step owns."""
    out: dict[str, Any] = {"strategy": strategy.type_name, "steps": len(strategy.groups),
                           "classes_per_step": [list(g) for g in strategy.groups]}
    if strategy.masks is not None:
        owned, free, sizes = strategy.masks.owned_counts(), strategy.masks.free_counts(), strategy.masks.sizes()
        out["layers"] = [{"layer": n, "weights": sizes[n], "owned_per_step": owned[n], "free": free[n]}
                         for n in strategy.masks.names]
    else:
        out["snapshots_kept"] = sorted(strategy.snapshots)
    return out
