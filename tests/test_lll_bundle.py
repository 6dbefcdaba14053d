"""Task bundles an LLL agent shares: round trip, and every malformed bundle refused with one line
(exit 2 through the CLI) before anything is used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from exmodel.agents.knowledge import FORMAT, TaskBundleError, TaskKnowledge, load_task, save_task
from exmodel.agents.mappers import GMMCAnchor
from exmodel.cli import main

D, C, K = 6, 3, 4


def knowledge() -> TaskKnowledge:
    g = torch.Generator().manual_seed(0)
    return TaskKnowledge(
        "toy", ("cat", "dog", "emu"), "bb/64px", torch.randn(C, D, generator=g), torch.randn(C, generator=g),
        GMMCAnchor(torch.full((K,), 1 / K), torch.randn(K, D, generator=g), torch.rand(K, D, generator=g) + 0.1),
        torch.randn(C, D, generator=g), torch.randint(0, 256, (2 * C, 1, 8, 8), dtype=torch.uint8, generator=g),
        torch.arange(C).repeat_interleave(2), {"_conv_stem": torch.zeros(32)}, {"train_images": 30})


def test_round_trip_keeps_every_tensor(tmp_path: Path) -> None:
    k = knowledge()
    path = save_task(k, tmp_path / "toy.safetensors")
    back = load_task(path, backbone="bb/64px")
    assert back.task == "toy" and back.class_names == k.class_names and back.info == {"train_images": 30}
    for a, b in [(back.head_weight, k.head_weight), (back.gmmc.variances, k.gmmc.variances),
                 (back.maha_images, k.maha_images), (back.maha_labels, k.maha_labels),
                 (back.biases["_conv_stem"], k.biases["_conv_stem"])]:
        assert torch.equal(a, b)
    # what each mapper shares: GMMC's clusters (2 x K x D floats) or MAHA's means and images
    head = k.nbytes(("head",))
    assert k.nbytes(("head", "gmmc")) - head >= 4 * (K + 2 * K * D)
    assert k.nbytes(("head", "maha")) - head >= 4 * C * D + 2 * C * 64
    assert path.stat().st_size == k.nbytes()


def test_maha_features_travel_instead_of_images(tmp_path: Path) -> None:
    k = knowledge()
    feats = torch.randn(2 * C, D, generator=torch.Generator().manual_seed(1))
    k.maha_images, k.maha_features = None, feats
    back = load_task(save_task(k, tmp_path / "toy.safetensors"))
    assert back.maha_images is None and torch.equal(back.maha_features, feats)
    assert torch.equal(back.maha_labels, k.maha_labels)
    assert k.nbytes(("head", "maha")) - k.nbytes(("head",)) >= 4 * C * D + 4 * 2 * C * D
    bad = tmp_path / "bad.safetensors"
    for wrong, message in ((torch.zeros(2 * C, D + 1), r"maha/features must be floats \(N, 6\), got torch.float32 \(6, 7\)"),
                           (torch.zeros(2 * C + 1, D), "maha/labels must be int64, one per image")):
        bad.write_bytes(save({**k.tensors(), "maha/features": wrong}, metadata={"exmodel": json.dumps(k.card())}))
        with pytest.raises(TaskBundleError, match=message):
            load_task(bad)


def write(path: Path, tensors: dict, card: dict | None = None) -> Path:
    k = knowledge()
    meta = {**k.card(), **(card or {})}
    path.write_bytes(save({**k.tensors(), **tensors}, metadata={"exmodel": json.dumps(meta)}))
    return path


@pytest.mark.parametrize(("tensors", "card", "message"), [
    ({"head/weight": torch.zeros(C + 1, D)}, None,
     r"the head is \(4, 6\) but the task has 3 class names on 6 features"),
    ({}, {"class_names": ["cat", "dog"]}, r"the head is \(3, 6\) but the task has 2 class names"),
    ({"gmmc/means": torch.zeros(K, D + 1)}, None, r"gmmc anchors of the wrong dimension: means \(4, 7\)"),
    ({"maha/means": torch.zeros(C, D - 1)}, None, r"maha anchors of the wrong dimension: means \(3, 5\)"),
    ({"gmmc/variances": torch.full((K, D), float("nan"))}, None, r"1 tensors hold NaN or infinity \(e.g. gmmc/variances\)"),
    ({"gmmc/variances": torch.zeros(K, D)}, None, "gmmc/variances must be positive"),
    ({"gmmc/weights": torch.full((K,), 0.5)}, None, "gmmc/weights must be positive and sum to 1"),
    ({"maha/labels": torch.tensor([0, 1, 2, 3, 0, 1])}, None, r"maha/labels must be classes of the task \(0..2\)"),
    ({"maha/images": torch.zeros(6, 1, 8, 8)}, None, "maha/images must be uint8"),
    ({"maha/features": torch.zeros(6, D)}, None, "maha needs means, labels and either images or features"),
    ({}, {"version": 9}, "LLL task bundle format version 9; this exmodel reads 1"),
    ({}, {"format": "other"}, f"not an exmodel LLL task bundle \\(no '{FORMAT}' description"),
])
def test_malformed_bundles_are_one_line_exit_2(tmp_path: Path, capsys, tensors, card, message) -> None:
    path = write(tmp_path / "bad.safetensors", tensors, card)
    with pytest.raises(TaskBundleError, match=message):
        load_task(path)
    assert main(["lll-task", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.safetensors" in err[0]


def test_a_bundle_of_another_backbone_is_refused(tmp_path: Path) -> None:
    path = save_task(knowledge(), tmp_path / "toy.safetensors")
    with pytest.raises(TaskBundleError, match="learned on backbone bb/64px, this agent's is lite0/224px"):
        load_task(path, backbone="lite0/224px")


def test_a_pickle_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "task.safetensors"
    torch.save({"head/weight": torch.zeros(2, 2)}, path)
    with pytest.raises(TaskBundleError, match="task.safetensors"):
        load_task(path)


def test_cli_shows_a_good_bundle(tmp_path: Path, capsys) -> None:
    path = save_task(knowledge(), tmp_path / "toy.safetensors")
    assert main(["lll-task", str(path)]) == 0
    out = capsys.readouterr().out
    assert "task toy, 3 classes, backbone bb/64px, 6 features, GMMC 4 clusters, MAHA means + 6 images" in out
    assert "classes: cat, dog, emu" in out
