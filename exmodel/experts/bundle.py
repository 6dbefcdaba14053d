"""Expert bundles: a directory holding ``weights.safetensors`` and ``card.json``.

Bundles are how experts travel between people, so loading one treats it as untrusted input:

* nothing is ever unpickled (safetensors is a flat tensor container; a pickle or ``torch.save`` file
  handed over as a bundle is recognised by its first bytes and refused);
* the weights are read once, and the same bytes are parsed and hashed: the SHA-256 must equal the
  card's ``weights_sha256``;
* the tensors must be exactly the ones ``build_model(card.arch, **card.arch_kwargs)`` has (names,
  shapes, dtypes), all finite, and the network's head must have one output per ``card.class_ids``;
* an expert of any architecture (``arch: "program"``) carries its network as ``program.json``, a
  ``torch.export`` graph of ATen operators run by :class:`~exmodel.experts.program.ProgramNet`; its
  SHA-256 must equal the card's ``program_sha256`` and its tensors are the program's own.

Each failure is a one-line :class:`~exmodel.errors.BundleError` naming the bundle. Saving writes both
files into a temporary directory next to the target and renames it into place, so a crash never
leaves a half-written bundle under the final name.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import safetensors.torch
import torch
from torch import nn

from exmodel import limits
from exmodel.errors import BundleError, ExmodelError
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.experts.program import PROGRAM_ARCH, PROGRAM_FILE, ProgramNet
from exmodel.experts.weights_file import header_tensors, read_data, read_weights
from exmodel.fileio import (atomic_replace_dir, atomic_write_bytes, atomic_write_text, open_dir, read_bounded,
                            sha256_bytes)
from exmodel.text import quoted

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
BUNDLE_FILES = (WEIGHTS_FILE, CARD_FILE)
ALL_FILES = (*BUNDLE_FILES, PROGRAM_FILE)  # what a bundle directory may hold
MAX_PROGRAM_BYTES = 256 << 20

_PICKLE_PROTOCOL_BYTE = 0x80  # pickle protocol >= 2 streams start with PROTO (0x80)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive since PyTorch 1.6
_PICKLE_HINT = (
    "pickles are never loaded — use `exmodel import-checkpoint` with --allow-pickle-checkpoint"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------------------- validation
def _build_net(card: ExpertCard, source: str) -> nn.Module:
    from exmodel.models import build_model  # deferred: the models package is heavy to import

    try:
        return build_model(card.arch, **card.arch_kwargs)
    except ExmodelError as exc:
        raise BundleError(f"{source}: card arch '{card.arch}' cannot be built: {_first_line(exc)}") from None
    except TypeError as exc:  # a factory rejecting a value's type
        raise BundleError(f"{source}: card arch_kwargs are invalid for '{card.arch}': {_first_line(exc)}") from None


def _meta_state(card: ExpertCard, source: str) -> Mapping[str, torch.Tensor]:
    """The state dict ``card`` asks for, built on the meta device (shapes and dtypes, no storage)."""
    with torch.device("meta"):
        return _build_net(card, source).state_dict()


def _shape(t: torch.Tensor | torch.Size) -> str:
    dims = tuple(t.shape if isinstance(t, torch.Tensor) else t)
    return "(" + ", ".join(map(str, dims)) + ")"


def check_tensors(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], arch: str,
                  source: str) -> None:
    """Names, shapes and dtypes of ``got`` must equal ``expected``; all floats must be finite."""
    check_layout(expected, got, arch, source)
    for name, t in got.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise BundleError(f"{source}: tensor '{name}' contains {bad} non-finite value(s) (NaN or inf)")


def check_layout(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], arch: str,
                 source: str) -> None:
    """Names, shapes and dtypes of ``got`` must equal ``expected`` (meta tensors will do)."""
    for name, ref in expected.items():
        if name not in got:
            raise BundleError(f"{source}: weights lack tensor {quoted(name)} {_shape(ref)} that arch '{arch}' needs")
    for name in got:
        if name not in expected:
            raise BundleError(f"{source}: weights hold tensor {quoted(name)} that arch '{arch}' does not have")
    for name, ref in expected.items():
        t = got[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise BundleError(
                f"{source}: tensor {quoted(name)} has shape {_shape(t)}, expected {_shape(ref)} for arch '{arch}'"
            )
        if t.dtype != ref.dtype:
            raise BundleError(f"{source}: tensor {quoted(name)} has dtype {t.dtype}, expected {ref.dtype}")


def _build_program(program: Mapping[str, Any] | None, tensors: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    if program is None:
        raise BundleError(f"{source}: card arch '{PROGRAM_ARCH}' needs {PROGRAM_FILE}, which is missing")
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{source}: tensor '{name}' contains non-finite value(s) (NaN or inf)")
    try:
        return ProgramNet(program, tensors)
    except BundleError as exc:
        raise BundleError(f"{source}: {exc}") from None


def assemble_expert(card: ExpertCard, tensors: Mapping[str, torch.Tensor], source: str,
                    map_location: str | torch.device = "cpu", program: Mapping[str, Any] | None = None) -> Expert:
    """Build ``card.arch`` (or the ``program``), check ``tensors`` against it and against the card,
    return the Expert.

    Shared by :func:`load_bundle`, :func:`save_bundle` and the importers of
    :mod:`exmodel.experts.checkpoint` and :mod:`exmodel.experts.imports`; the returned expert is in
    eval mode.
    """
    if card.arch == PROGRAM_ARCH:
        net = _build_program(program, tensors, source)
    else:
        # The card's arch_kwargs size the network: compare it with the tensors present on the meta
        # device (no memory) before building it, so a card cannot ask for more than its weights hold.
        check_tensors(_meta_state(card, source), tensors, card.arch, source)
        net = _build_net(card, source)
        net.load_state_dict(dict(tensors), strict=True)
    channels = card.input_shape[0]
    in_channels = card.arch_kwargs.get("in_channels", getattr(net, "arch_kwargs", {}).get("in_channels"))
    if in_channels is not None and in_channels != channels:
        raise BundleError(f"{source}: card input_shape has C={channels} but arch_kwargs.in_channels={in_channels}")
    net.eval()
    # One dummy forward pass proves the card's input shape fits the network and tells the head size.
    # a zero image and a seeded random one: weights that overflow show on either
    noise = torch.rand(card.input_shape, generator=torch.Generator().manual_seed(0))
    probe = torch.stack([torch.zeros(card.input_shape), noise])
    try:
        with torch.no_grad():
            out = net(probe, task_id=card.task_id)
    except Exception as exc:  # noqa: BLE001  any failure here means card and network disagree
        raise BundleError(
            f"{source}: arch '{card.arch}' cannot run on input_shape {list(card.input_shape)}: {_first_line(exc)}"
        ) from None
    if out.ndim == 2 and not bool(torch.isfinite(out).all()):
        raise BundleError(f"{source}: the network's outputs are not finite (NaN or inf) on a test input; "
                          f"its weights are unusable")
    if out.ndim != 2 or out.shape[1] != len(card.class_ids):
        raise BundleError(
            f"{source}: the network's head has {out.shape[-1]} outputs but card class_ids lists "
            f"{len(card.class_ids)} classes"
        )
    expert = Expert(card, net).to(map_location)
    return expert.eval()


# ----------------------------------------------------------------------------------------- reading
def _explain_not_bundle(path: Path) -> BundleError:
    if not path.exists():
        return BundleError(f"{path}: no such bundle (expected a directory holding {WEIGHTS_FILE} and {CARD_FILE})")
    if path.suffix == ".pt2" and path.is_file():
        return BundleError(f"{path} is a torch.export program, not an exmodel bundle; "
                           f"import it first: exmodel import {path} --classes ... -o BUNDLE")
    if path.is_dir():
        missing = [f for f in BUNDLE_FILES if not (path / f).is_file()]
        return BundleError(f"{path}: not an exmodel bundle, {' and '.join(missing)} missing")
    if path.name in BUNDLE_FILES:
        return BundleError(f"{path}: pass the bundle directory {path.parent}, not a file inside it")
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        return BundleError(f"{path}: cannot read ({exc.strerror})")
    if head[:1] == bytes([_PICKLE_PROTOCOL_BYTE]) or head[:4] == _ZIP_MAGIC:
        return BundleError(f"{path} is a pickle/torch checkpoint, not an exmodel bundle; {_PICKLE_HINT}")
    # safetensors files start with an 8-byte little-endian header length, then the JSON header '{'.
    if len(head) == 9 and head[8:9] == b"{":
        return BundleError(
            f"{path} is a bare safetensors file, not an exmodel bundle (a directory holding "
            f"{WEIGHTS_FILE} and {CARD_FILE})"
        )
    return BundleError(f"{path} is a file, not an exmodel bundle (a directory holding {WEIGHTS_FILE} and {CARD_FILE})")


def _bundle_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    for _ in range(100):
        if path.is_dir() and all((path / f).is_file() for f in BUNDLE_FILES):
            return path
        # where directories cannot be exchanged in one step, a writer renames the old one aside
        # (".NAME.xxxxxxxx.old") just before it renames the new one in: wait for it
        if not any(path.parent.glob(f".{glob.escape(path.name)}.*.old")):
            break
        time.sleep(0.01)
    raise _explain_not_bundle(path)


def load_card(path: str | os.PathLike) -> ExpertCard:
    """Read and validate only the card of a bundle (no weights are read)."""
    path = Path(path)
    if path.is_file() and path.name == CARD_FILE:
        return ExpertCard.from_json_file(path)
    return ExpertCard.from_json_file(_bundle_dir(path) / CARD_FILE)


def _parse_weights(raw: bytes, source: str) -> dict[str, torch.Tensor]:
    if not raw:
        raise BundleError(f"{source}: {WEIGHTS_FILE} is empty")
    try:
        return safetensors.torch.load(raw)
    except Exception as exc:  # noqa: BLE001  SafetensorError and friends: corrupt input
        raise BundleError(
            f"{source}: {WEIGHTS_FILE} is truncated or not a valid safetensors file ({_first_line(exc)})"
        ) from None


def _count_tensors(raw: bytes) -> int | None:
    """Tensor count from the safetensors header (u64 little-endian length, then a JSON object)."""
    try:
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + length])
        return sum(1 for key in header if key != "__metadata__")
    except (struct.error, ValueError, TypeError):
        return None


_READ_TRIES = 20


class _Bundle(NamedTuple):
    directory: Path
    card: ExpertCard
    weights: bytes
    program: bytes | None
    card_bytes: int
    weights_error: BundleError | None = None  # the weights file's header does not fit the card: data not read


def _read_bundle(path: str | os.PathLike) -> _Bundle:
    """The card, weights and program of one bundle, all read from the same directory.

    The directory is opened once and its members are read through that descriptor, so a writer
    that swaps a new bundle in meanwhile (:func:`~exmodel.fileio.atomic_replace_dir`) cannot mix
    old and new files. If it deletes the old one before everything was read, the read starts over
    on the new one."""
    for attempt in range(_READ_TRIES):
        directory = _bundle_dir(path)
        try:
            fd = open_dir(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BundleError(f"{directory}: cannot open ({exc.strerror})") from None
        try:
            return _read_members(directory, fd)
        except FileNotFoundError:
            if not _replaced(directory, fd):
                raise BundleError(f"{directory}: not an exmodel bundle, a file is missing") from None
            time.sleep(0.002 * attempt)  # a writer swapped a new bundle in: read that one
        finally:
            os.close(fd)
    raise BundleError(f"{path}: replaced by other writers {_READ_TRIES} times while being read; try again")


def _replaced(directory: Path, fd: int) -> bool:
    """Whether the directory read through ``fd`` was deleted or is no longer the one at ``directory``."""
    st = os.fstat(fd)
    try:
        now = os.stat(directory)
    except FileNotFoundError:
        return True
    return st.st_nlink == 0 or (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino)


def _member(fd: int, name: str, limit: int, directory: Path) -> bytes:
    try:
        return read_bounded(name, limit, name, dir_fd=fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BundleError(f"{directory}: cannot read {name} ({exc.strerror})") from None


def _read_members(directory: Path, fd: int) -> _Bundle:
    card_raw = _member(fd, CARD_FILE, limits.max_text_bytes(), directory)
    card = ExpertCard.from_json_bytes(card_raw, str(directory / CARD_FILE))
    raw, weights_error = _weights_member(fd, card, directory)
    program = None
    if card.arch == PROGRAM_ARCH:
        try:
            program = _member(fd, PROGRAM_FILE, MAX_PROGRAM_BYTES, directory)
        except FileNotFoundError:
            if _replaced(directory, fd):
                raise
            raise BundleError(f"{directory}: card arch '{PROGRAM_ARCH}' needs {PROGRAM_FILE}, which is missing") from None
    return _Bundle(directory, card, raw, program, len(card_raw), weights_error)


def _weights_member(fd: int, card: ExpertCard, directory: Path) -> tuple[bytes, BundleError | None]:
    """The weights file, read header first: if the tensors it describes cannot be the card's
    network, the data is not read (the header and the error are returned instead)."""
    source = f"bundle {directory}"
    try:
        prefix, fh, header = read_weights(WEIGHTS_FILE, fd, limits.max_weights_bytes(), source)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BundleError(f"{directory}: cannot read {WEIGHTS_FILE} ({exc.strerror})") from None
    except BundleError as exc:
        return b"", exc
    try:
        if card.arch != PROGRAM_ARCH:
            check_layout(_meta_state(card, source), header_tensors(header), card.arch, source)
    except BundleError as exc:
        fh.close()
        return prefix, exc
    return read_data(fh, prefix, source, WEIGHTS_FILE), None


def _check_hash(raw: bytes, recorded: str, file: str, source: str) -> None:
    digest = sha256_bytes(raw)
    if digest != recorded:
        expected = f"{recorded[:12]}…" if recorded else "(none recorded)"
        what = "weights" if file == WEIGHTS_FILE else "program"
        raise BundleError(
            f"{source}: SHA-256 of {file} is {digest[:12]}…, card says {expected}; "
            f"the {what} were modified or belong to another card"
        )


def _parse_program(raw: bytes, source: str) -> dict[str, Any]:
    try:
        program = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BundleError(f"{source}: {PROGRAM_FILE} is not valid JSON") from None
    if not isinstance(program, dict):
        raise BundleError(f"{source}: {PROGRAM_FILE} is not a JSON object")
    return program


def _verify(directory: Path, card: ExpertCard, raw: bytes, map_location: str | torch.device,
            program_raw: bytes | None = None, weights_error: BundleError | None = None) -> Expert:
    source = f"bundle {directory}"
    if weights_error is not None:
        raise weights_error
    tensors = _parse_weights(raw, source)
    _check_hash(raw, card.weights_sha256, WEIGHTS_FILE, source)
    program = None
    if program_raw is not None:
        _check_hash(program_raw, card.program_sha256, PROGRAM_FILE, source)
        program = _parse_program(program_raw, source)
    return assemble_expert(card, tensors, source, map_location, program)


def load_bundle(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Expert:
    """Load and fully verify a bundle directory; returns an :class:`Expert` in eval mode."""
    directory, card, raw, program, _, weights_error = _read_bundle(path)
    return _verify(directory, card, raw, map_location, program, weights_error)


def inspect_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for ``exmodel inspect``: card fields, sizes and whether full verification passes.

    Raises only when the path is not a bundle or its card is unreadable; a weights problem is
    reported under ``verification_error`` with ``verified = False``.
    """
    directory, card, raw, program, card_bytes, weights_error = _read_bundle(path)
    info: dict[str, Any] = card.model_dump(mode="json")
    info["path"] = str(directory)
    info["file_sizes"] = {WEIGHTS_FILE: len(raw), CARD_FILE: card_bytes,
                          **({PROGRAM_FILE: len(program)} if program is not None else {})}
    info["num_tensors"] = _count_tensors(raw)
    info["num_parameters"] = None
    try:
        expert = _verify(directory, card, raw, "cpu", program, weights_error)
    except BundleError as exc:
        info["verified"] = False
        info["verification_error"] = str(exc)
    else:
        info["num_parameters"] = sum(p.numel() for p in expert.net.parameters())
        info["verified"] = True
        info["verification_error"] = None
    return info


# ----------------------------------------------------------------------------------------- writing
def _state_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors needs contiguous CPU tensors that do not share storage, hence the clone.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


def check_target(target: Path) -> None:
    """Refuse to replace anything that is not an earlier bundle (never rmtree a user's directory)."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise BundleError(f"{target}: exists and is not a bundle directory; refusing to replace it")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in ALL_FILES)
    if foreign:
        raise BundleError(
            f"{target}: exists and holds files other than a bundle's ({', '.join(foreign[:3])}); refusing to replace it"
        )


def save_bundle(expert: Expert | tuple[nn.Module, ExpertCard], directory: str | os.PathLike) -> Path:
    """Write ``expert`` (or a ``(net, card)`` pair) as a bundle directory and return its path.

    The network is verified against its card first (same checks as :func:`load_bundle`), then the
    card's ``weights_sha256`` is set to the hash of the written weights. The directory appears
    atomically: both files are written into a temporary sibling directory that is then renamed.
    """
    if isinstance(expert, Expert):
        net, card = expert.net, expert.card
    else:
        net, card = expert
    target = Path(directory)
    source = f"cannot save bundle {target}"
    arch_name = getattr(net, "arch_name", None)
    if arch_name and arch_name != card.arch:
        raise BundleError(f"{source}: the network is a '{arch_name}' but the card says arch '{card.arch}'")
    program_raw = None
    if isinstance(net, ProgramNet):
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.program_tensors().items()}
        program_raw = (json.dumps(net.program, separators=(",", ":")) + "\n").encode()
        program = _parse_program(program_raw, source)
    else:
        tensors, program = _state_tensors(net), None
    reference = assemble_expert(card, tensors, source, program=program)  # validates before anything is written
    built_kwargs = getattr(reference.net, "arch_kwargs", None)
    net_kwargs = getattr(net, "arch_kwargs", None)
    if built_kwargs is not None and net_kwargs is not None and built_kwargs != net_kwargs:
        raise BundleError(
            f"{source}: card arch_kwargs {card.arch_kwargs} do not rebuild the network "
            f"(its arch_kwargs are {net_kwargs})"
        )
    check_target(target)
    raw = safetensors.torch.save(tensors, metadata={"format": "pt"})
    digest = sha256_bytes(raw)
    hashes = {"weights_sha256": digest, "program_sha256": sha256_bytes(program_raw) if program_raw else ""}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        atomic_write_bytes(tmp / WEIGHTS_FILE, raw)
        if program_raw is not None:
            atomic_write_bytes(tmp / PROGRAM_FILE, program_raw)
        atomic_write_text(tmp / CARD_FILE, card.model_copy(update=hashes).to_json())
        atomic_replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    card.weights_sha256, card.program_sha256 = hashes["weights_sha256"], hashes["program_sha256"]  # once on disk
    return target
