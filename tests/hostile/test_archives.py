"""Hostile archives and pickles given to `exmodel import` and `exmodel import-checkpoint`.

A payload, if it ran, would create a marker file; no case may create it. (Real torch.export
programs with payloads in each part are in tests/test_program.py.)
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import refused


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _lie_about_size(raw: bytes, size: int) -> bytes:
    """Set the uncompressed size in the central directory entries (a zip bomb's claim, cheaply)."""
    out = bytearray(raw)
    at = out.find(b"PK\x01\x02")
    while at != -1:
        out[at + 24:at + 28] = struct.pack("<I", size)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def _cases(marker: Path) -> dict[str, tuple[bytes, str]]:
    evil = pickle.dumps(_Payload(marker))
    return {
        "random bytes": (os.urandom(64), "not a torch.export archive"),
        "empty zip": (_zip({}), "not a torch.export archive"),
        "pickle payload member": (_zip({"m/data.pkl": evil, "m/models/m.json": b"{}"}), ""),
        "path traversal member": (_zip({"../../escape/models/x.json": b"{}"}), ""),
        "claims 4 GiB unpacked": (_lie_about_size(_zip({"m/models/m.json": b"{}"}), 0xFFFFFFF0), "larger than"),
        "20,001 members": (_zip({f"m/{i}": b"" for i in range(20_001)}), "members once unpacked"),
        "models JSON not JSON": (_zip({"m/models/m.json": b"{"}), "is not valid JSON"),
        "two programs": (_zip({"m/models/a.json": b"{}", "m/models/b.json": b"{}"}), "holds 2 programs"),
    }


@pytest.mark.parametrize("case", list(_cases(Path("x"))))
def test_hostile_pt2_is_refused_and_nothing_runs(capsys, tmp_path, case):
    marker = tmp_path / "payload-ran"
    raw, fragment = _cases(marker)[case]
    (tmp_path / "m.pt2").write_bytes(raw)
    refused(capsys, "archives and pickles", ["import", tmp_path / "m.pt2", "--classes", "0-1", "-o", tmp_path / "b"],
            fragment, root=tmp_path)
    assert not marker.exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("opt_in", [False, True])
def test_pickled_checkpoint_payload_never_runs(capsys, tmp_path, opt_in):
    marker = tmp_path / "payload-ran"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "evil": _Payload(marker)}, buf)
    (tmp_path / "ckpt.pt").write_bytes(buf.getvalue())
    args = ["import-checkpoint", tmp_path / "ckpt.pt", "-o", tmp_path / "b", "--card", tmp_path / "card.json"]
    (tmp_path / "card.json").write_text('{"arch": "mlp"}')
    if opt_in:
        args.append("--allow-pickle-checkpoint")
    refused(capsys, "archives and pickles", args, "posix.system beside tensors, refused" if opt_in else "pickle",
            root=tmp_path)
    assert not marker.exists()
