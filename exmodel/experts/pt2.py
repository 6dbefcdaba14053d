"""Reading a ``torch.export`` archive (``.pt2``) without running anything in it.

A ``.pt2`` file is a zip archive: ``NAME/models/NAME.json`` (the graph), ``NAME/data/weights/…``
(raw little-endian tensor storages described by ``model_weights_config.json``), the same for
constants, and a few small text records. Some members may be pickles: weights or constants with
``use_pickle: true``, and ``data/sample_inputs/*.pt`` (a ``torch.save`` of example inputs). This
reader never unpickles. Every pickle in the archive (nested ``torch.save`` zips included) is
*scanned* opcode by opcode with :mod:`pickletools`, which executes nothing: one that imports
anything but the tensor-rebuilding functions PyTorch writes is refused as hostile. Pickled weights
and constants are refused even when benign, since they cannot be read without unpickling (export
the model again with plain tensors). Sizes are bounded before anything is decompressed.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from exmodel.errors import BundleError
from exmodel.experts.program import serde_maps

MAX_ARCHIVE_BYTES = 2 << 30  # uncompressed total
MAX_JSON_BYTES = 256 << 20
MAX_MEMBERS = 20_000
# The globals a benign torch.save pickle of tensors and plain containers imports.
SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor_v3"), ("collections", "OrderedDict"), ("torch", "Size"),
    ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"), ("torch", "device"),
} | {("torch", f"{kind}Storage") for kind in (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "Untyped")}


def scan_pickle(data: bytes, where: str) -> None:
    """Refuse a pickle that imports anything outside :data:`SAFE_GLOBALS` (nothing is executed)."""
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
            elif op.name == "STACK_GLOBAL":
                if len(strings) < 2:
                    raise BundleError(f"{where}: a pickle imports an object it does not name; refused")
                module, name = strings[-2], strings[-1]
            elif op.name in ("INST", "OBJ", "REDUCE_EX"):
                raise BundleError(f"{where}: a pickle builds objects with {op.name}; refused")
            else:
                continue
            if (module, name) not in SAFE_GLOBALS:
                raise BundleError(f"{where}: holds a pickle that imports {module}.{name}; refused as hostile "
                                  "(exmodel never unpickles)")
    except (ValueError, EOFError) as exc:  # not a well-formed pickle
        raise BundleError(f"{where}: a malformed pickle ({exc}); refused") from None


def _scan_member(raw: bytes, where: str, depth: int = 0) -> None:
    """Scan ``raw`` if it is a pickle or a torch.save zip of pickles."""
    if raw[:1] == b"\x80":
        scan_pickle(raw, where)
    elif raw[:4] == b"PK\x03\x04" and depth < 2:
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as inner:
                for info in inner.infolist()[:MAX_MEMBERS]:
                    if info.filename.endswith(".pkl") and info.file_size <= MAX_JSON_BYTES:
                        _scan_member(inner.read(info), f"{where}:{info.filename}", depth + 1)
        except zipfile.BadZipFile:
            raise BundleError(f"{where}: a corrupt nested archive") from None


def _tensor(raw: bytes, meta: dict, where: str) -> torch.Tensor:
    try:
        dtype = serde_maps()[0][int(meta["dtype"])]
        sizes = [int(s["as_int"]) for s in meta["sizes"]]
        strides = [int(s["as_int"]) for s in meta["strides"]]
        offset = int(meta["storage_offset"]["as_int"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{where}: malformed tensor description (symbolic or missing sizes)") from None
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) % itemsize:
        raise BundleError(f"{where}: {len(raw)} bytes is not a whole number of {dtype} values")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    if len(sizes) != len(strides) or min(sizes + strides + [offset], default=0) < 0:
        raise BundleError(f"{where}: malformed sizes or strides")
    last = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) if all(sizes) else -1
    if last >= flat.numel():
        raise BundleError(f"{where}: sizes {sizes} reach past the {flat.numel()} stored values")
    if not all(sizes):
        return torch.empty(sizes, dtype=dtype)
    return torch.as_strided(flat, sizes, strides, offset).clone()


def _payload(zf: zipfile.ZipFile, prefix: str, config_path: str, folder: str, source: str) -> dict[str, torch.Tensor]:
    try:
        config = json.loads(zf.read(config_path)).get("config", {})
    except KeyError:
        raise BundleError(f"{source}: {config_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise BundleError(f"{source}: {config_path} is not valid JSON") from None
    out = {}
    for fqn, meta in config.items():
        where = f"{source}: tensor '{fqn}'"
        if not isinstance(meta, dict):
            raise BundleError(f"{where}: malformed entry")
        if meta.get("use_pickle"):
            raise BundleError(f"{where} is stored as a pickle, which exmodel never loads; export the model "
                              "again with plain tensor weights")
        path = f"{prefix}{folder}/{meta.get('path_name')}"
        try:
            raw = zf.read(path)
        except KeyError:
            raise BundleError(f"{where}: archive member {path} is missing") from None
        out[fqn] = _tensor(raw, meta.get("tensor_meta") or {}, where)
    return out


def read_pt2(path: str | os.PathLike | IO[bytes],
             max_bytes: int = MAX_ARCHIVE_BYTES) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(program JSON, {fqn: tensor})`` of the single model in a ``.pt2`` archive (a path or an open
    binary file); see the module docstring."""
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise BundleError(f"{source}: no such file")
    else:
        source = "torch.export archive"
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise BundleError(f"{source}: not a torch.export archive (.pt2 files are zip archives)") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > max_bytes:
            raise BundleError(f"{source}: the archive is larger than {max_bytes >> 20} MiB or "
                              f"{MAX_MEMBERS} members once unpacked")
        names = [i.filename for i in infos]
        models = [n for n in names if n.count("/") == 2 and n.split("/")[1] == "models" and n.endswith(".json")]
        if not models:
            raise BundleError(f"{source}: not a torch.export archive of PyTorch 2.8 or newer (no NAME/models/*.json)")
        if len(models) > 1:
            raise BundleError(f"{source}: holds {len(models)} programs; exmodel imports archives of one")
        prefix = models[0].split("/")[0] + "/"
        for info in infos:  # every pickle anywhere in the archive, before anything else is read
            if info.filename.endswith((".pt", ".pkl")) or "/data/" in info.filename:
                with zf.open(info) as fh:
                    head = fh.read(4)
                if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
                    _scan_member(zf.read(info), f"{source}: {info.filename}")
        model = models[0]
        if zf.getinfo(model).file_size > MAX_JSON_BYTES:
            raise BundleError(f"{source}: {model} is larger than {MAX_JSON_BYTES >> 20} MiB")
        try:
            program = json.loads(zf.read(model))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise BundleError(f"{source}: {model} is not valid JSON") from None
        if not isinstance(program, dict):
            raise BundleError(f"{source}: {model} is not a JSON object")
        name = model.split("/")[-1][: -len(".json")]
        tensors = _payload(zf, prefix, f"{prefix}data/weights/{name}_weights_config.json", "data/weights", source)
        tensors |= _payload(zf, prefix, f"{prefix}data/constants/{name}_constants_config.json", "data/constants", source)
    return strip_program(program), tensors


def strip_program(program: dict[str, Any]) -> dict[str, Any]:
    """The parts of the program exmodel runs: graph and signature, without the sender's stack traces
    and file paths (``metadata``), guards and symbolic-shape expressions it never evaluates."""
    gm = program.get("graph_module")
    if not isinstance(gm, dict) or not isinstance(gm.get("graph"), dict):
        raise BundleError("program: graph_module.graph is missing")
    graph = gm["graph"]
    nodes = [{k: v for k, v in n.items() if k != "metadata"} if isinstance(n, dict) else n
             for n in graph.get("nodes", [])]
    specs = (gm.get("signature") or {}).get("input_specs") or []
    inputs = {s["user_input"]["arg"]["as_tensor"]["name"] for s in specs
              if isinstance(s, dict) and isinstance(s.get("user_input"), dict)
              and isinstance(s["user_input"].get("arg"), dict) and "as_tensor" in s["user_input"]["arg"]
              and isinstance(s["user_input"]["arg"]["as_tensor"], dict)}
    values = graph.get("tensor_values") if isinstance(graph.get("tensor_values"), dict) else {}
    user = {k: v for k, v in values.items() if k in inputs}  # only the input's shape is read
    return {"format": "torch.export", "schema_version": program.get("schema_version"),
            "torch_version": program.get("torch_version"),
            "graph_module": {"signature": gm.get("signature"),
                             "graph": {"nodes": nodes, "tensor_values": user}}}
