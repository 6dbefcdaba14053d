"""Reading a safetensors weights file of unknown origin, header first.

A safetensors file is an 8-byte little-endian header length ``N``, a JSON header of ``N`` bytes that
gives every tensor's dtype, shape and byte range, then the tensor data. :func:`read_weights` reads
and checks the header before the data: a truncated or padded file, a sparse file of zeros, a header
that claims more bytes than the file has, or tensors that cannot be those the card's architecture
needs are refused after reading a few bytes, not after reading gigabytes. The caller compares the
tensor layout (:func:`header_tensors`, meta tensors: shapes and dtypes without storage) with the
network before the data is read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import BinaryIO

import torch

from exmodel.errors import BundleError
from exmodel.fileio import FileTooLarge
from exmodel.text import printable, quoted

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}


def parse_header(raw: bytes, source: str) -> dict[str, dict]:
    """The tensor entries of a safetensors JSON header, checked: known dtypes, non-negative shapes,
    byte ranges that match the shapes and tile the data without gaps or overlaps."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BundleError(f"{source}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise BundleError(f"{source}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    spans = []
    for name, entry in header.items():
        what = f"{source}: tensor {quoted(name)}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise BundleError(f"{what}: header entry must hold exactly dtype, shape and data_offsets")
        if entry["dtype"] not in DTYPES:
            raise BundleError(f"{what}: dtype {quoted(entry['dtype'])} is not one exmodel reads ({', '.join(DTYPES)})")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and len(shape) <= 8):
            raise BundleError(f"{what}: shape {printable(shape, one_line=True)} must be a list of at most 8 non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise BundleError(f"{what}: data_offsets {printable(offsets, one_line=True)} must be [begin, end] with 0 <= begin <= end")
        nbytes = math.prod(shape) * DTYPES[entry["dtype"]][1]
        if offsets[1] - offsets[0] != nbytes:
            raise BundleError(f"{what}: shape {shape} of {entry['dtype']} is {nbytes} bytes but data_offsets "
                              f"span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise BundleError(f"{source}: tensor {quoted(name)} starts at byte {begin} of the data, expected {end} "
                              f"(gap or overlap)")
        end = stop
    return header


def data_bytes(header: dict[str, dict]) -> int:
    """Bytes of tensor data the header describes."""
    return max((e["data_offsets"][1] for e in header.values()), default=0)


def header_tensors(header: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Meta tensors (shape and dtype, no storage) of the header's entries."""
    return {name: torch.empty(e["shape"], dtype=DTYPES[e["dtype"]][0], device="meta") for name, e in header.items()}


def read_weights(name: str, dir_fd: int, limit: int, source: str) -> tuple[bytes, BinaryIO, dict[str, dict]]:
    """Open ``name`` in the directory ``dir_fd`` (not following a symbolic link) and return
    ``(prefix, file, header)`` where ``prefix`` is the length field and the header, ``file`` an
    open binary file positioned at the data. The file's size must be exactly what the header
    describes and at most ``limit`` bytes. The caller reads the data with :func:`read_data`."""
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    fh = os.fdopen(fd, "rb")
    try:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise FileTooLarge(0, f"{name} is {size} bytes, more than the {limit} allowed (EXMODEL_MAX_WEIGHTS_BYTES)")
        if size == 0:
            raise BundleError(f"{source}: {name} is empty")
        head = fh.read(8)
        if len(head) < 8:
            raise BundleError(f"{source}: {name} is truncated ({size} bytes, shorter than a safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > min(size - 8, MAX_HEADER_BYTES):
            raise BundleError(f"{source}: {name} is not a valid safetensors file (header length {n} "
                              f"does not fit a file of {size} bytes)")
        raw = fh.read(n)
        header = parse_header(raw, f"{source}: {name}")
        expected = 8 + n + data_bytes(header)
        if expected != size:
            raise BundleError(f"{source}: {name} is {size} bytes but its header describes {expected} "
                              f"({'truncated' if size < expected else 'extra bytes at the end'})")
    except BaseException:
        fh.close()
        raise
    return head + raw, fh, header


def read_data(fh: BinaryIO, prefix: bytes, source: str, name: str) -> bytes:
    """The whole file: ``prefix`` and the rest of ``fh`` (closed afterwards)."""
    with fh:
        size = os.fstat(fh.fileno()).st_size
        body = fh.read(size - len(prefix) + 1)
    if len(prefix) + len(body) != size:
        raise BundleError(f"{source}: {name} changed size while being read")
    return prefix + body


def read_described(path, fmt: str, version: int, what: str, error: type[Exception]):
    """``(description, tensors)`` of a safetensors file whose metadata key ``exmodel`` holds a JSON
    description with ``format == fmt`` and ``version == version`` (an M²KD learner, an LLL task
    bundle); every problem is one ``error`` line that names the file."""
    from pathlib import Path

    from safetensors.torch import load as load_tensors

    from exmodel import limits

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise error(f"{source}: no such file")
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        prefix, fh, _ = read_weights(path.name, fd, limits.max_weights_bytes(), source)
        raw = read_data(fh, prefix, source, path.name)
    except (FileTooLarge, BundleError) as exc:
        raise error(f"{source}: {exc}" if source not in str(exc) else str(exc)) from None
    finally:
        os.close(fd)
    header = json.loads(prefix[8:].decode("utf-8"))
    try:
        meta = json.loads((header.get("__metadata__") or {}).get("exmodel", "null"))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise error(f"{source}: not {what} (no '{fmt}' description in its metadata)")
    if meta.get("version") != version:
        raise error(f"{source}: {what} format version {meta.get('version')!r}; this exmodel reads {version}")
    return meta, load_tensors(raw)
