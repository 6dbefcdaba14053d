"""Malformed, truncated, padded, sparse and lying safetensors files in a bundle."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import count, refused, write_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmodel.errors import BundleError
from exmodel.experts.bundle import load_bundle


def _file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _valid(bundle: Path) -> bytes:
    return (bundle / "weights.safetensors").read_bytes()


def _tensors(bundle: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(_valid(bundle))


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HEADERS = {
    "empty file": (b"", "is empty"),
    "four bytes": (b"\x01\x02\x03\x04", "is truncated (4 bytes, shorter than a safetensors header)"),
    "header length 0": (struct.pack("<Q", 0) + b"{}", "header length 0 does not fit"),
    "header length 2^63": (struct.pack("<Q", 1 << 63) + b"{}", "does not fit a file of"),
    "header past the end": (struct.pack("<Q", 100) + b"{}", "header length 100 does not fit a file of 10 bytes"),
    "header not JSON": (struct.pack("<Q", 4) + b"{{{{", "the safetensors header is not valid JSON"),
    "header not UTF-8": (struct.pack("<Q", 2) + b"\xff\xfe", "the safetensors header is not valid JSON"),
    "header a list": (_file([]), "the safetensors header is not a JSON object"),  # type: ignore[arg-type]
    "header nested 100k deep": (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
                                "the safetensors header is not valid JSON"),
    "unknown dtype": (_file({"w": {**ENTRY, "dtype": "F128"}}, bytes(8)), "dtype 'F128' is not one exmodel reads"),
    "negative dimension": (_file({"w": {**ENTRY, "shape": [-2]}}, bytes(8)), "must be a list of at most 8"),
    "float dimension": (_file({"w": {**ENTRY, "shape": [2.0]}}, bytes(8)), "must be a list of at most 8"),
    "shape larger than its bytes": (_file({"w": {**ENTRY, "shape": [10**12]}}, bytes(8)),
                                    "is 4000000000000 bytes but data_offsets span 8"),
    "offsets reversed": (_file({"w": {**ENTRY, "data_offsets": [8, 0]}}, bytes(8)), "0 <= begin <= end"),
    "overlapping tensors": (_file({"a": ENTRY, "b": ENTRY}, bytes(8)), "(gap or overlap)"),
    "gap between tensors": (_file({"a": ENTRY, "b": {**ENTRY, "data_offsets": [16, 24]}}, bytes(24)),
                            "(gap or overlap)"),
    "extra entry keys": (_file({"w": {**ENTRY, "x": 1}}, bytes(8)), "must hold exactly dtype, shape and data_offsets"),
    "data truncated": (_file({"w": ENTRY}, bytes(4)), "(truncated)"),
    "bytes after the data": (_file({"w": ENTRY}, bytes(12)), "(extra bytes at the end)"),
    "valid file, wrong tensors": (_file({"w": ENTRY}, bytes(8)), "weights lack tensor"),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_malformed_weights_file_is_refused(capsys, bundle, case):
    raw, fragment = HEADERS[case]
    write_weights(bundle, raw)
    refused(capsys, "safetensors headers", ["inspect", bundle], fragment, root=bundle.parent)


def test_sparse_two_gib_file_is_refused_without_reading_it(capsys, bundle):
    with open(bundle / "weights.safetensors", "wb") as fh:
        fh.truncate(2 << 30)  # a hole: 2 GiB of zeros that take no disk
    line = refused(capsys, "truncated and sparse files", ["inspect", bundle], "header length 0 does not fit")
    assert "2147483648 bytes" in line


def test_file_over_the_limit_is_refused_before_reading(capsys, bundle, monkeypatch):
    monkeypatch.setenv("EXMODEL_MAX_WEIGHTS_BYTES", "100")
    refused(capsys, "truncated and sparse files", ["inspect", bundle], "more than the 100 allowed")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_weights_are_refused(capsys, bundle, keep):
    raw = _valid(bundle)
    write_weights(bundle, raw[: int(len(raw) * keep)])
    refused(capsys, "truncated and sparse files", ["inspect", bundle], "weights.safetensors")


@pytest.mark.parametrize("what,value,fragment", [
    ("NaN", float("nan"), "non-finite value(s)"),
    ("inf", float("inf"), "non-finite value(s)"),
    ("3e38 (finite, NaN outputs)", 3e38, "the network's outputs are not finite"),
])
def test_weights_that_cannot_compute_are_refused(capsys, bundle, what, value, fragment):
    tensors = _tensors(bundle)
    tensors = {k: torch.full_like(v, value) for k, v in tensors.items()}
    write_weights(bundle, safetensors.torch.save(tensors))
    refused(capsys, "lying cards and weights", ["inspect", bundle], fragment)


def test_tensor_shaped_for_another_network_is_refused(capsys, bundle):
    tensors = _tensors(bundle)
    tensors["hidden.0.0.weight"] = torch.zeros(4, 65)
    write_weights(bundle, safetensors.torch.save(tensors))
    refused(capsys, "lying cards and weights", ["inspect", bundle], "has shape (4, 65), expected (4, 64)")


def test_symlinked_weights_are_not_followed(capsys, bundle, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(_valid(bundle))
    (bundle / "weights.safetensors").unlink()
    (bundle / "weights.safetensors").symlink_to(outside)
    refused(capsys, "symlinks", ["inspect", bundle], "cannot read weights.safetensors")


# ------------------------------------------------------------------------------- property-based
_dims = st.lists(st.integers(min_value=-3, max_value=1 << 40), max_size=4)
_entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I64", "U8", "F8", "", "f32"]),
                                "shape": st.one_of(_dims, st.integers(), st.text(max_size=3)),
                                "data_offsets": st.lists(st.integers(min_value=-8, max_value=1 << 40), max_size=3)})
_header = st.dictionaries(st.text(max_size=20), st.one_of(_entry, st.integers(), st.none()), max_size=5)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_header, data=st.binary(max_size=64))
def test_random_headers_are_refused_with_a_bundle_error(bundle, header, data):
    write_weights(bundle, _file(header, data))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    assert "\n" not in str(info.value)
    count("safetensors headers (Hypothesis)")


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.binary(min_size=0, max_size=40), cut=st.integers(min_value=0, max_value=64))
def test_random_bytes_and_cuts_are_refused_with_a_bundle_error(bundle, prefix, cut):
    raw = _valid(bundle)
    write_weights(bundle, prefix + raw[cut:])
    if prefix + raw[cut:] == raw:
        return
    with pytest.raises(BundleError):
        load_bundle(bundle)
    count("truncated and sparse files (Hypothesis)")
