"""Importing a plain PyTorch checkpoint as an expert.

Many trained models exist only as ``torch.save``'d state dicts. Those files are pickles, and
unpickling can run arbitrary code, so importing one is opt-in (``allow_pickle=True``, on the command
line ``exmodel import-checkpoint --allow-pickle-checkpoint``). Even then the file is read with
``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that only rebuilds tensors
and plain containers. The state dict may sit at the top level or under ``"state_dict"`` / ``"model"``;
a ``"module."`` prefix left by ``DataParallel`` is stripped. The resulting expert is validated with
exactly the checks a bundle gets (:func:`exmodel.experts.bundle.assemble_expert`); save it with
:func:`exmodel.experts.bundle.save_bundle` to get a safe, hashed bundle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import exmodel
from exmodel.errors import BundleError
from exmodel.experts.bundle import assemble_expert
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.fileio import sha256_bytes

_NESTING_KEYS = ("state_dict", "model")  # common wrappers: Lightning/timm-style and plain scripts
_MAX_NESTING = 3  # e.g. {"model": {"state_dict": {...}}}; deeper wrappers are not state dicts
_DATA_PARALLEL_PREFIX = "module."


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
    for _ in range(_MAX_NESTING):
        if not isinstance(obj, Mapping):
            raise BundleError(f"{source}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    raise BundleError(
        f"{source}: entry {bad!r} is not a tensor; expected a state dict, optionally under 'state_dict' or 'model'"
    )


def _clean(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise BundleError(f"{source}: state dict key {key!r} is not a string")
        name = key.removeprefix(_DATA_PARALLEL_PREFIX)
        if name in tensors:
            raise BundleError(f"{source}: tensor '{name}' appears twice (with and without 'module.')")
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    return tensors


def import_checkpoint(path: str | os.PathLike, card_fields: dict[str, Any], allow_pickle: bool = False) -> Expert:
    """Import a ``torch.save``'d state dict as an :class:`Expert` described by ``card_fields``.

    ``card_fields`` are the :class:`ExpertCard` fields; ``library_version``, ``weights_sha256`` and
    (unless given) ``created`` are filled in here.
    """
    path = Path(path)
    source = f"checkpoint {path}"
    if not allow_pickle:
        raise BundleError(
            f"{source}: PyTorch checkpoints are pickles and are not loaded by default; pass "
            "allow_pickle=True (CLI: --allow-pickle-checkpoint) to read it with torch.load(weights_only=True)"
        )
    if not path.is_file():
        raise BundleError(f"{source}: no such file")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  UnpicklingError (refused object), corrupt zip, EOF, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{source}: cannot be read as a weights-only PyTorch checkpoint ({first})") from None
    tensors = _clean(_unwrap(obj, source), source)
    fields = dict(card_fields)
    fields["library_version"] = exmodel.__version__
    fields.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    # The hash of the safetensors bytes save_bundle would write for these tensors.
    fields["weights_sha256"] = sha256_bytes(safetensors.torch.save(tensors, metadata={"format": "pt"}))
    card = ExpertCard.from_dict(fields, source=f"{source} card fields")
    return assemble_expert(card, tensors, source)
