"""Bad input to the ``exmodel`` CLI: exit status 2, one ``error: ...`` line naming the problem, nothing written.

Covers broken expert bundles (``exmodel inspect`` and a corrupted expert cache read by
``train-experts``), config mistakes, a corrupted dataset file and ``--debug``. Most cases call
:func:`exmodel.cli.main` in-process; the subprocess tests check the real exit status and stderr.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import helpers
from helpers import (TINY_CONFIG, assert_one_error_line, cli, exmodel_command, snapshot, subprocess_env,
                     write_config)

from exmodel.errors import ConfigError
from exmodel.experts.bundle import save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.models import build_model

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ----------------------------------------------------------------------------------------- bundles
@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A valid bundle: a freshly initialised 2-class LeNet for global classes 3 and 7 of 10."""
    torch.manual_seed(0)
    net = build_model("lenet", num_classes=2)
    card = ExpertCard(name="e37", arch="lenet", arch_kwargs=dict(net.arch_kwargs), class_ids=[3, 7],
                      class_names=["3", "7"], trained_class_ids=[3, 7], num_global_classes=10,
                      input_shape=(1, 28, 28), normalization={"mean": [0.1307], "std": [0.3081]})
    return save_bundle((net, card), tmp_path / "bundle")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load((path / "weights.safetensors").read_bytes())


def _rewrite(path: Path, tensors: dict[str, torch.Tensor] | None = None, **card_changes: Any) -> None:
    """Replace weights and/or card fields, keeping the card's SHA-256 right for the new weights."""
    if tensors is not None:
        (path / "weights.safetensors").write_bytes(safetensors.torch.save(tensors))
    card = json.loads((path / "card.json").read_text())
    card.update(card_changes)
    card["weights_sha256"] = hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest()
    (path / "card.json").write_text(json.dumps(card))


def _inspect_fails(capsys: pytest.CaptureFixture[str], path: Path, fragment: str) -> str:
    before = snapshot(path.parent)
    line = assert_one_error_line(cli(capsys, "inspect", path), fragment)
    assert snapshot(path.parent) == before  # inspecting never writes or repairs anything
    return line


def test_inspect_accepts_the_valid_bundle(capsys: pytest.CaptureFixture[str], bundle: Path) -> None:
    result = cli(capsys, "inspect", bundle, "--json")
    assert result.code == 0 and result.err == ""
    info = json.loads(result.out)
    assert info["verified"] is True and info["class_ids"] == [3, 7] and info["arch"] == "lenet"


def test_truncated_bundle(capsys: pytest.CaptureFixture[str], bundle: Path) -> None:
    raw = (bundle / "weights.safetensors").read_bytes()
    (bundle / "weights.safetensors").write_bytes(raw[: len(raw) // 2])
    line = _inspect_fails(capsys, bundle, f"weights.safetensors is {len(raw) // 2} bytes but its header describes "
                                          f"{len(raw)} (truncated)")
    assert str(bundle) in line


def test_hash_mismatch(capsys: pytest.CaptureFixture[str], bundle: Path) -> None:
    raw = bytearray((bundle / "weights.safetensors").read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]  # safetensors: u64 header length, JSON header, tensor data
    raw[8 + header_len + 1000] ^= 0x01  # one bit inside the tensor data; the card is left as it was
    (bundle / "weights.safetensors").write_bytes(bytes(raw))
    _inspect_fails(capsys, bundle, "SHA-256 of weights.safetensors is")


def test_pickle_passed_as_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "expert.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    _inspect_fails(capsys, path, f"{path} is a pickle/torch checkpoint, not an exmodel bundle")


def test_torch_save_file_passed_as_bundle(capsys: pytest.CaptureFixture[str], bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(_weights(bundle), path)
    line = _inspect_fails(capsys, path, f"{path} is a pickle/torch checkpoint")
    assert "--allow-pickle-checkpoint" in line  # says how to convert it instead


def test_nan_weights_with_correct_hash(capsys: pytest.CaptureFixture[str], bundle: Path) -> None:
    tensors = _weights(bundle)
    tensors["fc1.0.weight"][5, 7] = float("nan")
    _rewrite(bundle, tensors)
    _inspect_fails(capsys, bundle, "tensor 'fc1.0.weight' contains 1 non-finite value(s)")


def test_class_ids_out_of_range(capsys: pytest.CaptureFixture[str], bundle: Path) -> None:
    _rewrite(bundle, class_ids=[3, 12])
    _inspect_fails(capsys, bundle, "class_ids[1]=12 is out of range [0, 10)")


def test_wrong_tensor_shape_with_correct_hash(capsys: pytest.CaptureFixture[str], bundle: Path) -> None:
    tensors = _weights(bundle)
    tensors["head.weight"] = torch.zeros(3, 84)
    _rewrite(bundle, tensors)
    _inspect_fails(capsys, bundle, "tensor 'head.weight' has shape (3, 84), expected (2, 84) for arch 'lenet'")


def test_corrupted_expert_cache_is_reported_not_used(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A cached expert whose weights were cut short stops the command (it is never half-loaded)."""
    config = write_config(tmp_path / "mini.yaml", {
        "scenario": {"n_experiences": 2, "train_per_class": 10, "test_per_class": 5},
        "expert": {"epochs": 1, "batch_size": 32},
    })
    cache = tmp_path / "cache"
    assert cli(capsys, "-q", "train-experts", config, "--cache-dir", cache).code == 0
    (weights,) = cache.glob("experts/*/expert-001/weights.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(cache)
    line = assert_one_error_line(cli(capsys, "-q", "train-experts", config, "--cache-dir", cache),
                                 "weights.safetensors is 1000 bytes but its header describes")
    assert str(weights.parent) in line
    assert snapshot(cache) == before


# ----------------------------------------------------------------------------------------- configs
CONFIG_CASES = [
    pytest.param({"scenario": {"n_experience": 5}}, [],
                 "unknown key 'scenario.n_experience'; allowed: dataset, kind, n_experiences,", id="nested-typo"),
    pytest.param({"scenarios": {"n_experiences": 5}}, [],
                 "unknown key 'scenarios'; allowed: name, scenario, expert, strategies,", id="top-level-typo"),
    pytest.param({"strategies": [{"name": "oracle"}, {"name": "ensemble_average"}]}, [],
                 "unknown strategy 'ensemble_average'; available: ", id="unknown-strategy"),
    pytest.param({}, ["--set", "expert.epoch=2"], "unknown key 'expert.epoch'; allowed: arch,", id="set-typo"),
    pytest.param({}, ["--set", "strategies.9.params.epochs=1"], "--set strategies.9.params.epochs: no such entry",
                 id="set-missing-index"),
    pytest.param({}, ["--set", "expert.epochs"], "--set expects key=value, got 'expert.epochs'", id="set-no-value"),
    pytest.param({"expert": {"epochs": 0}}, [], "expert.epochs: Input should be greater than or equal to 1",
                 id="bad-value"),
]


@pytest.mark.parametrize(("changes", "extra_args", "fragment"), CONFIG_CASES)
def test_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    changes: dict[str, Any], extra_args: list[str], fragment: str) -> None:
    monkeypatch.chdir(tmp_path)  # a default output folder (runs/...) would appear here
    config = write_config(tmp_path / "bad.yaml", **changes)
    before = snapshot(tmp_path)
    line = assert_one_error_line(cli(capsys, "run", config, "--out", tmp_path / "out", *extra_args), fragment)
    if changes and "strategies" not in changes:
        assert str(config) in line  # names the file the key is in
    assert snapshot(tmp_path) == before  # no --out folder, nothing else


def test_missing_and_invalid_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_error_line(cli(capsys, "run", tmp_path / "nope.yaml"), f"config file not found: {tmp_path / 'nope.yaml'}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: [unclosed\n")
    assert_one_error_line(cli(capsys, "run", bad, "--out", tmp_path / "out"), f"{bad}: not valid YAML")
    bad.write_text("- just\n- a list\n")
    assert_one_error_line(cli(capsys, "run", bad, "--out", tmp_path / "out"), "expected a mapping at the top level")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_debug_reraises_instead_of_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", scenario={"n_experience": 5})
    with pytest.raises(ConfigError, match=r"unknown key 'scenario\.n_experience'"):
        cli(capsys, "--debug", "run", config, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- data
def _corrupt_mnist_dir(root: Path) -> str:
    """``root/mnist`` with the four expected file names, one of them corrupted; returns its name."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    shared = helpers.SHARED_DATA / "mnist"
    if all((shared / n).is_file() for n in MNIST_FILES):
        for name in MNIST_FILES[:3]:
            shutil.copyfile(shared / name, folder / name)
        raw = bytearray((shared / MNIST_FILES[3]).read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the test labels
        (folder / MNIST_FILES[3]).write_bytes(bytes(raw))
        return MNIST_FILES[3]
    for name in MNIST_FILES:  # no real data here: any other bytes fail the first checksum just as well
        (folder / name).write_bytes(b"\x1f\x8b not really mnist")
    return MNIST_FILES[0]


def test_corrupted_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    corrupted = _corrupt_mnist_dir(data)
    config = write_config(tmp_path / "tiny.yaml")
    before = snapshot(data)
    out = tmp_path / "out"
    result = cli(capsys, "run", config, "--data-dir", data, "--out", out)
    line = assert_one_error_line(result, f"mnist/{corrupted}: checksum mismatch")
    assert "delete it or re-download" in line
    assert not out.exists()
    assert snapshot(data) == before  # the bad file is neither deleted nor "repaired"


def test_missing_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    config = write_config(tmp_path / "tiny.yaml")
    result = cli(capsys, "train-experts", config, "--data-dir", data, "--cache-dir", tmp_path / "cache")
    assert_one_error_line(result, f"mnist: missing {data / 'mnist' / MNIST_FILES[0]}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tiny.yaml"]


def test_report_of_a_folder_without_results(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_error_line(cli(capsys, "report", tmp_path), f"{tmp_path / 'results.json'}: not found")


# ----------------------------------------------------------------------------------------- real process
@pytest.mark.slow
def test_real_process_exit_status_and_stderr(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", {**TINY_CONFIG, "scenario": {"n_experience": 5}})
    out = tmp_path / "out"
    args = ["run", str(config), "--out", str(out)]
    env = subprocess_env(tmp_path / "cache")
    plain = subprocess.run([*exmodel_command(), *args], capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2
    from exmodel.config import ScenarioConfig

    allowed = ", ".join(ScenarioConfig.model_fields)
    assert plain.stderr.splitlines() == [f"error: {config}: unknown key 'scenario.n_experience'; allowed: {allowed}"]
    assert plain.stdout == ""
    debug = subprocess.run([*exmodel_command(), "--debug", *args], capture_output=True, text=True, env=env,
                           timeout=120)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "exmodel.errors.ConfigError" in debug.stderr
    assert not out.exists()
