"""A saved M²KD learner: read back exactly, inspected, rebuilt into bundles, and refused when tampered."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from exmodel.cli import main
from exmodel.experts.bundle import load_bundle
from exmodel.strategies import Step, StreamInfo, build_strategy
from exmodel.strategies.cil.learner_file import LearnerFileError, describe, load_learner
from tests.test_m2kd import _data

GROUPS = [(0, 1), (2, 3), (4, 5)]
INFO = StreamInfo(kind="cil", num_classes=6, input_shape=(1, 28, 28), mean=(0.5,), std=(0.25,),
                  task_classes=tuple(GROUPS), n_experiences=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    strategy = build_strategy("m2kd_paper", {"arch": "lenet_bn", "iterations": 2, "batch_size": 6}, INFO, 0)
    for i, classes in enumerate(GROUPS):
        strategy.observe(Step(i, i, classes), None, _data(INFO.input_shape, classes, i, num_classes=6))
    path = strategy.save_learner(tmp_path_factory.mktemp("learner") / "m2kd.safetensors")
    return strategy, path


def test_a_saved_learner_reads_back_exactly(trained):
    strategy, path = trained
    back = load_learner(path)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    ids = torch.zeros(4, dtype=torch.long)
    assert torch.equal(back.predict(x, ids), strategy.predict(x, ids))
    for k in (1, 2, 3):
        assert torch.equal(back.snapshot(k)(x), strategy.snapshot(k)(x))
    assert back.groups == strategy.groups and back.seen == strategy.seen
    summary = describe(back)
    assert summary["steps"] == 3 and summary["classes_per_step"] == [[0, 1], [2, 3], [4, 5]]
    fc1 = next(r for r in summary["layers"] if r["layer"] == "net.fc1.0.weight")
    assert fc1["weights"] == 400 * 120 and sum(fc1["owned_per_step"]) + fc1["free"] == fc1["weights"]
    assert fc1["owned_per_step"][0] == round(0.25 * 48000)  # ratio 0.75: a quarter of the free weights per step


def test_inspect_shows_the_owners_and_rebuilds_a_step_as_a_bundle(trained, tmp_path, capsys):
    strategy, path = trained
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "m2kd_paper: 3 steps, classes 0,1 | 2,3 | 4,5" in text and "net.fc1.0.weight" in text
    out = tmp_path / "step2"
    assert main(["inspect", str(path), "--rebuild", "2", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rebuilt"] == {"step": 2, "classes": [0, 1, 2, 3], "bundle": str(out)}
    expert = load_bundle(out)
    assert expert.card.trained_class_ids == [0, 1, 2, 3]
    assert expert.card.class_names == ["class 0", "class 1", "class 2", "class 3", "class 4", "class 5"]
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    assert torch.equal(expert(x), strategy.snapshot(2)(x))
    assert main(["inspect", str(path), "--rebuild", "4", "--out", str(tmp_path / "no")]) == 2
    assert "--rebuild 4:" in capsys.readouterr().err and not (tmp_path / "no").exists()


def _rewrite(path, target, change):
    tensors = load_file(path)
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        meta = json.loads(fh.read(n))["__metadata__"]
    change(tensors, meta)
    save_file(tensors, target, metadata=meta)
    return target


def test_tampered_learners_are_refused_with_one_line_and_nothing_written(trained, tmp_path, capsys):
    _, path = trained

    def stray_weight(tensors, meta):
        w = tensors["model/net.fc2.0.weight"]
        owners = load_learner(path).masks.owner["net.fc2.0.weight"]
        w[owners == 0] = 0.5  # weights no step owns must be zero

    def no_such_strategy(tensors, meta):
        info = json.loads(meta["exmodel"])
        info["strategy"] = "lwf_mc"
        meta["exmodel"] = json.dumps(info)

    def short_masks(tensors, meta):
        tensors["masks/owners"] = tensors["masks/owners"][:-1].clone()

    cases = {stray_weight: "masks do not match the weights: net.fc2.0.weight has",
             no_such_strategy: "strategy 'lwf_mc' is not an m2kd form",
             short_masks: "masks do not match the weights: packed masks hold"}
    for change, message in cases.items():
        bad = _rewrite(path, tmp_path / f"{change.__name__}.safetensors", change)
        with pytest.raises(LearnerFileError, match=message):
            load_learner(bad)
        out = tmp_path / f"{change.__name__}-bundle"
        assert main(["inspect", str(bad), "--rebuild", "1", "--out", str(out)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line and not out.exists()
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(LearnerFileError, match="not an exmodel M²KD learner"):
        load_learner(plain)
