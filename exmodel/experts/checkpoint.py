"""Importing a plain PyTorch checkpoint as an expert.

Many trained models exist only as state dicts. A safetensors state dict is read as it is (it cannot
hold code). ``torch.save``'d state dicts are pickles, and
unpickling can run arbitrary code, so importing one is opt-in (``allow_pickle=True``, on the command
line ``exmodel import-checkpoint --allow-pickle-checkpoint``). Even then the file is read with
``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that only rebuilds tensors
and plain containers. The state dict may sit at the top level or under ``"state_dict"`` / ``"model"``;
a ``"module."`` prefix left by ``DataParallel`` is stripped. The resulting expert is validated with
exactly the checks a bundle gets (:func:`exmodel.experts.bundle.assemble_expert`); save it with
:func:`exmodel.experts.bundle.save_bundle` to get a safe, hashed bundle.

The architecture is either a registered one, described by card fields (:func:`import_checkpoint`;
keys that do not fit are all listed, ``--rename`` maps prefixes), or the user's own module built by a
factory function (:func:`import_with_factory`), which is then exported with ``torch.export`` so
that whoever receives the bundle needs no code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
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


def parse_renames(items: Sequence[str], source: str = "--rename") -> list[tuple[str, str]]:
    """``["fc1.=hidden.0.0.", ...]`` -> ``[("fc1.", "hidden.0.0."), ...]`` (key prefix, replacement)."""
    out = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise BundleError(f"{source}: expected OLD_PREFIX=NEW_PREFIX, got {item!r}")
        out.append((old, new))
    return out


def rename_keys(tensors: Mapping[str, torch.Tensor], renames: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Each key with the first matching old prefix replaced by its new prefix (others unchanged)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        new = next((n + key[len(o):] for o, n in renames if key.startswith(o)), key)
        if new in out:
            raise BundleError(f"--rename maps two tensors to '{new}'")
        out[new] = t
    return out


def key_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], what: str) -> str | None:
    """One line naming every missing, unexpected and mis-shaped tensor (the first 8 of each), or None."""
    def show(names, table):
        items = [f"{n} {tuple(table[n].shape)}" for n in names[:8]]
        return ", ".join(items) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    parts = []
    if missing:
        parts.append(f"{what} needs {show(missing, expected)}")
    if extra:
        parts.append(f"the checkpoint has {show(extra, got)}")
    for k in shapes[:8]:
        parts.append(f"tensor '{k}' has shape {_dims(got[k])}, expected {_dims(expected[k])}")
    if not parts:
        return None
    hint = " (map names with --rename OLD_PREFIX=NEW_PREFIX)" if missing or extra else ""
    return "; ".join(parts) + hint


def _dims(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False,
                    renames: Sequence[tuple[str, str]] = ()) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: safetensors (read as it is) or a ``torch.save`` pickle
    (only with ``allow_pickle``, through ``torch.load(weights_only=True)``), keys renamed."""
    path = Path(path)
    source = f"checkpoint {path}"
    if not path.is_file():
        raise BundleError(f"{source}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON object
        try:
            tensors = safetensors.torch.load_file(str(path))
        except Exception as exc:  # noqa: BLE001  corrupt header or data
            raise BundleError(f"{source}: not a valid safetensors file ({str(exc).splitlines()[0][:120]})") from None
        return rename_keys(_clean(tensors, source), renames)
    return rename_keys(_load_pickled(path, source, allow_pickle), renames)


def import_checkpoint(path: str | os.PathLike, card_fields: dict[str, Any], allow_pickle: bool = False,
                      renames: Sequence[tuple[str, str]] = ()) -> Expert:
    """Import a state dict (safetensors, or a ``torch.save`` file with ``allow_pickle``) as an
    :class:`Expert` of a registered architecture described by ``card_fields``.

    ``card_fields`` are the :class:`ExpertCard` fields; ``library_version``, ``weights_sha256`` and
    (unless given) ``created`` are filled in here. Keys that do not fit the architecture are all
    listed in one error; ``renames`` maps key prefixes first.
    """
    path = Path(path)
    source = f"checkpoint {path}"
    tensors = read_state_dict(path, allow_pickle, renames)
    fields = dict(card_fields)
    fields["library_version"] = exmodel.__version__
    fields.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    card = ExpertCard.from_dict(fields, source=f"{source} card fields")
    from exmodel.experts.bundle import _build_net

    problem = key_mismatch(_build_net(card, source).state_dict(), tensors, f"arch '{card.arch}'")
    if problem:
        raise BundleError(f"{source}: {problem}")
    # The hash of the safetensors bytes save_bundle would write for these tensors.
    card.weights_sha256 = sha256_bytes(safetensors.torch.save(tensors, metadata={"format": "pt"}))
    return assemble_expert(card, tensors, source)


def import_with_factory(path: str | os.PathLike, factory: str, *, allow_pickle: bool = False,
                        renames: Sequence[tuple[str, str]] = (), name: str | None = None,
                        **card_options: Any) -> Expert:
    """A state dict loaded into the user's own module, built by ``factory`` (``package.module:function``
    or ``path/to/file.py:function``: the user's code, run by the user's choice), then exported with
    ``torch.export`` so that the bundle needs no code; ``card_options`` as in
    :func:`exmodel.experts.imports.make_card`."""
    from exmodel.experts.imports import expert_from_module

    module = build_from_factory(factory)
    tensors = read_state_dict(path, allow_pickle, renames)
    problem = key_mismatch(module.state_dict(), tensors, f"the module of {factory}")
    if problem:
        raise BundleError(f"checkpoint {path}: {problem}")
    module.load_state_dict(tensors, strict=True)
    return expert_from_module(module, name=name or Path(path).stem, **card_options)


def build_from_factory(spec: str) -> torch.nn.Module:
    """Call ``package.module:function`` (or ``file.py:function``) with no arguments; it must return a module."""
    import importlib
    import importlib.util

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise BundleError(f"--factory expects package.module:function or file.py:function, got {spec!r}")
    try:
        if target.endswith(".py"):
            loaded = importlib.util.spec_from_file_location(Path(target).stem, target)
            if loaded is None or loaded.loader is None or not Path(target).is_file():
                raise BundleError(f"--factory: no such file {target}")
            mod = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
        fn = getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise BundleError(f"--factory {spec}: {exc}") from None
    try:
        module = fn()
    except Exception as exc:  # noqa: BLE001  the user's code: any failure becomes one line
        raise BundleError(f"--factory {spec} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(module, torch.nn.Module):
        raise BundleError(f"--factory {spec} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _load_pickled(path: Path, source: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise BundleError(
            f"{source}: PyTorch checkpoints are pickles and are not loaded by default; pass "
            "allow_pickle=True (CLI: --allow-pickle-checkpoint) to read it with torch.load(weights_only=True)"
        )
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  UnpicklingError (refused object), corrupt zip, EOF, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "Weights only load failed" in first:  # torch goes on to suggest weights_only=False: never do that
            refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
            first = f"it holds {refused.group(1) if refused else 'an object'} beside tensors, refused; re-save the " \
                    f"state dict alone, or as safetensors"
        raise BundleError(f"{source}: cannot be read as a weights-only PyTorch checkpoint ({first})") from None
    return _clean(_unwrap(obj, source), source)
