"""Experts, bundles and checkpoint import: round trips, and a specific BundleError for each bad input."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import exmodel
from exmodel.errors import BundleError, DataError
import exmodel.experts.bundle as bundle_module
from exmodel.experts.bundle import inspect_bundle, load_bundle, load_card, save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.experts.checkpoint import import_checkpoint
from exmodel.experts.expert import Expert, to_global
from exmodel.models import build_model

INF = float("inf")


def card_fields(net: nn.Module, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "e1",
        "arch": "lenet",
        "arch_kwargs": dict(net.arch_kwargs),
        "class_ids": [3, 7],
        "class_names": ["three", "seven"],
        "trained_class_ids": [3, 7],
        "num_global_classes": 10,
        "input_shape": (1, 28, 28),
        "normalization": {"mean": [0.1307], "std": [0.3081]},
        "training": {"seed": 0, "epochs": 1},
    }
    fields.update(overrides)
    return fields


def make_expert(seed: int = 0, **arch_kwargs: Any) -> Expert:
    torch.manual_seed(seed)
    kwargs = {"num_classes": 2, "batchnorm": True, **arch_kwargs}
    net = build_model("lenet", **kwargs)
    # Non-trivial BatchNorm statistics, so the round trip covers buffers as well as parameters.
    for _, bn in net.bn_layers():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return Expert(ExpertCard(**card_fields(net)), net).eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Expert, Path]:
    expert = make_expert()
    return expert, save_bundle(expert, tmp_path / "bundle")


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def rewrite(bundle: Path, tensors: dict[str, torch.Tensor] | None = None, **card_changes: Any) -> None:
    """Rewrite a bundle's weights and/or card, keeping the card's hash correct for the weights."""
    if tensors is not None:
        (bundle / "weights.safetensors").write_bytes(safetensors.torch.save(tensors))
    card = json.loads((bundle / "card.json").read_text())
    card.update(card_changes)
    card["weights_sha256"] = hashlib.sha256((bundle / "weights.safetensors").read_bytes()).hexdigest()
    (bundle / "card.json").write_text(json.dumps(card))


def weights(bundle: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load((bundle / "weights.safetensors").read_bytes())


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ----------------------------------------------------------------------------------------- to_global
def test_to_global_scatters_columns_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = to_global(logits, [3, 0], num_global_classes=4, fill=-9.0)
    assert torch.equal(out, torch.tensor([[2.0, -9.0, -9.0, 1.0], [4.0, -9.0, -9.0, 3.0]]))
    default = to_global(logits, torch.tensor([1, 2]), 3)
    assert torch.equal(default, torch.tensor([[-INF, 1.0, 2.0], [-INF, 3.0, 4.0]]))


@pytest.mark.parametrize(
    ("ids", "message"),
    [([0], "do not match 1 class ids"), ([0, 4], r"must lie in \[0, 4\)"), ([1, 1], "must be unique")],
)
def test_to_global_rejects_bad_ids(ids: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_global(torch.zeros(1, 2), ids, 4)


# ----------------------------------------------------------------------------------------- Expert
class FirstPixels(nn.Module):
    """Stand-in network: the logits are the first two (normalized) pixels, so outputs are hand-checkable."""

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return x.flatten(1)[:, :2]


def test_expert_normalizes_then_scatters() -> None:
    card = ExpertCard(
        name="toy", arch="toy", arch_kwargs={}, class_ids=[4, 1], class_names=["a", "b"],
        trained_class_ids=[4, 1], num_global_classes=5, input_shape=(2, 1, 2),
        normalization={"mean": [0.5, 0.0], "std": [0.25, 2.0]},
    )
    expert = Expert(card, FirstPixels())
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # channel 0 pixels: 1 and 0
    # (1 - 0.5) / 0.25 = 2 and (0 - 0.5) / 0.25 = -2
    assert torch.equal(expert(x), torch.tensor([[2.0, -2.0]]))
    assert torch.equal(expert.global_logits(x, fill=0.0), torch.tensor([[0.0, -2.0, 0.0, 0.0, 2.0]]))
    with pytest.raises(DataError, match=re.escape("expert 'toy' expects images shaped (B, 2, 1, 2), got (1, 1, 1, 2)")):
        expert(torch.zeros(1, 1, 1, 2))


# ----------------------------------------------------------------------------------------- round trip
def test_round_trip_is_bit_identical(saved: tuple[Expert, Path]) -> None:
    expert, path = saved
    assert sorted(os.listdir(path)) == ["card.json", "weights.safetensors"]
    assert sorted(os.listdir(path.parent)) == ["bundle"]  # no temporary directory left behind
    raw = (path / "weights.safetensors").read_bytes()
    assert expert.card.weights_sha256 == hashlib.sha256(raw).hexdigest()

    before = snapshot(path.parent)
    loaded = load_bundle(path)
    assert snapshot(path.parent) == before  # loading writes nothing
    assert not loaded.training
    assert loaded.card == expert.card
    original = expert.net.state_dict()
    restored = loaded.net.state_dict()
    assert list(restored) == list(original)
    for name, tensor in original.items():
        assert torch.equal(restored[name], tensor), name
        assert restored[name].dtype == tensor.dtype
    x = images()
    assert torch.equal(loaded(x), expert(x))
    globals_ = loaded.global_logits(x)
    assert torch.equal(globals_[:, [3, 7]], expert(x))
    assert torch.isinf(globals_[:, [0, 1, 2, 4, 5, 6, 8, 9]]).all()


def test_save_accepts_net_card_pair_and_replaces_old_bundle(tmp_path: Path) -> None:
    first, second = make_expert(seed=0), make_expert(seed=1)
    target = tmp_path / "b"
    save_bundle(first, target)
    save_bundle((second.net, second.card), target)
    x = images()
    assert torch.equal(load_bundle(target)(x), second(x))
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_multi_head_expert_uses_its_task_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model("lenet", heads=[2, 2], in_channels=1, input_size=28)
    card = ExpertCard(**card_fields(net, task_id=1))
    path = save_bundle((net, card), tmp_path / "mh")
    loaded = load_bundle(path)
    x = images()
    expected = net.eval()((x - 0.1307) / 0.3081, task_id=1)
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    assert not torch.allclose(loaded(x, task_id=0), expected)


def test_load_card_and_inspect(saved: tuple[Expert, Path]) -> None:
    expert, path = saved
    assert load_card(path) == expert.card
    assert load_card(path / "card.json") == expert.card
    info = inspect_bundle(path)
    assert info["verified"] is True and info["verification_error"] is None
    assert info["name"] == "e1" and info["class_ids"] == [3, 7]
    assert info["num_parameters"] == sum(p.numel() for p in expert.net.parameters())
    assert info["num_tensors"] == len(expert.net.state_dict())
    assert info["file_sizes"] == {
        "weights.safetensors": (path / "weights.safetensors").stat().st_size,
        "card.json": (path / "card.json").stat().st_size,
    }


# ----------------------------------------------------------------------------------------- bad bundles
def test_truncated_weights(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    raw = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(raw[: len(raw) // 2])
    want = f"bundle {path}: weights.safetensors is {len(raw) // 2} bytes but its header describes {len(raw)} (truncated)"
    with pytest.raises(BundleError, match=re.escape(want)):
        load_bundle(path)


def test_hash_mismatch_after_one_byte_changes(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    raw = bytearray((path / "weights.safetensors").read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]  # safetensors: u64 header size, JSON header, data
    raw[8 + header_len + 100] ^= 0x01
    (path / "weights.safetensors").write_bytes(bytes(raw))
    weights(path)  # still parses: only the hash can tell
    with pytest.raises(BundleError, match=re.escape(f"bundle {path}: SHA-256 of weights.safetensors is")):
        load_bundle(path)
    info = inspect_bundle(path)
    assert info["verified"] is False and "SHA-256" in info["verification_error"]


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "expert.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"a": 1}, fh)
    expected = re.escape(f"{path} is a pickle/torch checkpoint, not an exmodel bundle; pickles are never loaded")
    with pytest.raises(BundleError, match=expected + ".*--allow-pickle-checkpoint"):
        load_bundle(path)


def test_torch_save_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(make_expert().net.state_dict(), path)
    with pytest.raises(BundleError, match=re.escape(f"{path} is a pickle/torch checkpoint")):
        load_bundle(path)


def test_other_non_bundles(saved: tuple[Expert, Path], tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(BundleError, match="is a bare safetensors file"):
        load_bundle(_copy(path / "weights.safetensors", tmp_path / "w.safetensors"))
    with pytest.raises(BundleError, match=re.escape(f"pass the bundle directory {path}")):
        load_bundle(path / "weights.safetensors")
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "missing")
    (path / "card.json").unlink()
    with pytest.raises(BundleError, match=re.escape(f"{path}: not an exmodel bundle, card.json missing")):
        load_bundle(path)


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_nan_weights_named(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    tensors = weights(path)
    tensors["fc1.0.weight"][0, 0] = float("nan")
    rewrite(path, tensors)
    with pytest.raises(BundleError, match=re.escape("tensor 'fc1.0.weight' contains 1 non-finite value(s)")):
        load_bundle(path)


def test_class_ids_out_of_range(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    rewrite(path, class_ids=[3, 12])
    with pytest.raises(BundleError, match=re.escape(f"{path / 'card.json'}: class_ids[1]=12 is out of range [0, 10)")):
        load_bundle(path)


def test_wrong_shape_named(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    tensors = weights(path)
    tensors["head.weight"] = torch.zeros(3, 84)
    rewrite(path, tensors)
    expected = f"bundle {path}: tensor 'head.weight' has shape (3, 84), expected (2, 84) for arch 'lenet'"
    with pytest.raises(BundleError, match=re.escape(expected)):
        load_bundle(path)


def test_wrong_dtype_missing_and_extra_tensors(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    tensors = weights(path)
    tensors["head.bias"] = tensors["head.bias"].double()
    rewrite(path, tensors)
    with pytest.raises(BundleError, match="tensor 'head.bias' has dtype torch.float64, expected torch.float32"):
        load_bundle(path)
    del tensors["head.bias"]
    rewrite(path, tensors)
    with pytest.raises(BundleError, match=re.escape("weights lack tensor 'head.bias' (2) that arch 'lenet' needs")):
        load_bundle(path)
    tensors["head.bias"] = torch.zeros(2)
    tensors["extra"] = torch.zeros(1)
    rewrite(path, tensors)
    with pytest.raises(BundleError, match="weights hold tensor 'extra' that arch 'lenet' does not have"):
        load_bundle(path)


def test_card_schema_typo(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    card = json.loads((path / "card.json").read_text())
    card["trained_clas_ids"] = card.pop("trained_class_ids")
    (path / "card.json").write_text(json.dumps(card))
    expected = "unknown key 'trained_clas_ids' (did you mean 'trained_class_ids'?)"
    with pytest.raises(BundleError, match=re.escape(expected)):
        load_bundle(path)


def test_card_not_json(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    (path / "card.json").write_text("{not json")
    with pytest.raises(BundleError, match=re.escape(f"{path / 'card.json'}: not valid JSON (line 1, column 2")):
        load_bundle(path)


def test_unknown_arch_in_card(saved: tuple[Expert, Path]) -> None:
    _, path = saved
    rewrite(path, arch="lenet9000")
    with pytest.raises(BundleError, match="card arch 'lenet9000' cannot be built: unknown architecture 'lenet9000'"):
        load_bundle(path)


# ----------------------------------------------------------------------------------------- saving safely
def test_save_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(path: Path, text: str) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "atomic_write_text", broken_write)
    expert = make_expert()
    with pytest.raises(OSError, match="disk full"):
        save_bundle(expert, tmp_path / "b")
    assert os.listdir(tmp_path) == []
    assert expert.card.weights_sha256 == ""  # the card only records a hash that is on disk


def test_save_failure_keeps_previous_bundle(saved: tuple[Expert, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    expert, path = saved
    before = snapshot(path.parent)

    def broken_replace(tmp: Path, final: Path) -> Path:
        raise OSError("rename failed")

    monkeypatch.setattr(bundle_module, "atomic_replace_dir", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_bundle(make_expert(seed=5), path)
    assert snapshot(path.parent) == before
    assert torch.equal(load_bundle(path)(images()), expert(images()))


def test_save_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    expected = f"{target}: exists and holds files other than a bundle's (notes.txt)"
    with pytest.raises(BundleError, match=re.escape(expected)):
        save_bundle(make_expert(), target)
    assert (target / "notes.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_save_refuses_invalid_experts(tmp_path: Path) -> None:
    expert = make_expert()
    with torch.no_grad():
        expert.net.head.bias[1] = float("inf")
    with pytest.raises(BundleError, match=re.escape("tensor 'head.bias' contains 1 non-finite value(s)")):
        save_bundle(expert, tmp_path / "nan")

    torch.manual_seed(0)
    net = build_model("lenet", num_classes=2)  # in_channels defaults to 1
    rgb = card_fields(net, arch_kwargs={"num_classes": 2}, input_shape=(3, 28, 28),
                      normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(BundleError, match="card input_shape has C=3 but arch_kwargs.in_channels=1"):
        save_bundle((net, ExpertCard(**rgb)), tmp_path / "rgb")
    small = card_fields(net, arch_kwargs={"num_classes": 2}, input_shape=(1, 20, 20))
    with pytest.raises(BundleError, match=re.escape("arch 'lenet' cannot run on input_shape [1, 20, 20]")):
        save_bundle((net, ExpertCard(**small)), tmp_path / "small")
    wrong_arch = card_fields(net, arch_kwargs={"num_classes": 2, "dropout": 0.0}, arch="mlp")
    with pytest.raises(BundleError, match="the network is a 'lenet' but the card says arch 'mlp'"):
        save_bundle((net, ExpertCard(**wrong_arch)), tmp_path / "mlp")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------- checkpoints
def test_import_checkpoint_requires_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    expert = make_expert()
    torch.save(expert.net.state_dict(), path)
    with pytest.raises(BundleError, match=re.escape(f"checkpoint {path}: PyTorch checkpoints are pickles")
                       + ".*allow_pickle=True.*--allow-pickle-checkpoint"):
        import_checkpoint(path, card_fields(expert.net))


def test_import_checkpoint_nested_data_parallel(tmp_path: Path) -> None:
    expert = make_expert()
    path = tmp_path / "model.pt"
    state = {f"module.{k}": v for k, v in expert.net.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, path)
    imported = import_checkpoint(path, card_fields(expert.net), allow_pickle=True)
    x = images()
    assert torch.equal(imported(x), expert(x))
    assert imported.card.library_version == exmodel.__version__
    # The card's hash is that of the bundle the imported expert saves as.
    saved_path = save_bundle(imported, tmp_path / "b")
    assert imported.card.weights_sha256 == hashlib.sha256((saved_path / "weights.safetensors").read_bytes()).hexdigest()
    assert torch.equal(load_bundle(saved_path)(x), expert(x))


def test_import_checkpoint_validates_like_a_bundle(tmp_path: Path) -> None:
    expert = make_expert()
    state = expert.net.state_dict()
    state["head.weight"] = torch.zeros(5, 84)
    path = tmp_path / "model.pt"
    torch.save({"model": state}, path)
    with pytest.raises(BundleError, match=re.escape("tensor 'head.weight' has shape (5, 84), expected (2, 84)")):
        import_checkpoint(path, card_fields(expert.net), allow_pickle=True)
    torch.save({"a": 1}, path)
    with pytest.raises(BundleError, match="entry 'a' is not a tensor"):
        import_checkpoint(path, card_fields(expert.net), allow_pickle=True)


class _Exploit:
    """A pickle that would create a file when unpickled without restrictions."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_import_checkpoint_never_runs_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Exploit(marker)}, path)
    with pytest.raises(BundleError, match="cannot be read as a weights-only PyTorch checkpoint"):
        import_checkpoint(path, card_fields(make_expert().net), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(BundleError, match="is a pickle/torch checkpoint"):
        load_bundle(path)
    assert not marker.exists()
