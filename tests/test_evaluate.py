"""``exmodel evaluate``: a bundle's accuracy on a labelled dataset, and the card/dataset checks."""

import json

import pytest
import torch
import torch.nn.functional as F

from exmodel.data.registry import load_dataset
from exmodel.evaluation.score import accuracy_report, evaluate_bundle
from exmodel.experts.bundle import load_bundle, save_bundle
from tests.helpers import assert_one_error_line, cli, make_bundle


@pytest.fixture(autouse=True)
def embedded_data(monkeypatch):
    monkeypatch.delenv("EXMODEL_DATA_DIR", raising=False)  # the subsets shipped in the package


def mlp_bundle(path, classes, *, size=28, channels=1, **kw):
    """A small MLP bundle over MNIST's label space (see ``helpers.make_bundle``)."""
    return make_bundle(path, "mlp", classes, num_global_classes=10, shape=(channels, size, size), mean=0.13,
                       std=0.31, hidden=[8], **kw)


def table_rows(text):
    """First cell -> the other cells of every body row of a rich table."""
    return {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in text.splitlines() if line.startswith("│")}


def test_accuracy_report_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 0, 2, 2])
    r = accuracy_report(pred, labels, ("a", "b", "c"))
    assert r["images"] == 5 and r["accuracy"] == pytest.approx(3 / 5)
    assert r["per_class"] == {"a": {"images": 2, "accuracy": 0.5}, "b": {"images": 1, "accuracy": 1.0},
                              "c": {"images": 2, "accuracy": 0.5}}


def test_constant_bundle_scores_its_class_share(tmp_path):
    test = load_dataset("mnist").test
    n2, n3 = int((test.labels == 2).sum()), int((test.labels == 3).sum())
    bundle = mlp_bundle(tmp_path / "three", [2, 3], constant=3)
    r = evaluate_bundle(bundle, "mnist")
    assert r["classes"] == [2, 3] and r["images"] == n2 + n3
    assert r["accuracy"] == pytest.approx(n3 / (n2 + n3))
    assert r["per_class"] == {"2": {"images": n2, "accuracy": 0.0}, "3": {"images": n3, "accuracy": 1.0}}
    everything = evaluate_bundle(bundle, "mnist", all_classes=True)
    assert everything["images"] == len(test) and everything["accuracy"] == pytest.approx(n3 / len(test))


def test_other_resolution_is_resized_like_consolidate(tmp_path):
    bundle = mlp_bundle(tmp_path / "small", list(range(10)), size=14, seed=3)
    r = evaluate_bundle(bundle, "mnist", split="train")
    data = load_dataset("mnist").train
    expert = load_bundle(bundle).eval()
    with torch.no_grad():
        x = F.interpolate(data.float_images(), size=(14, 14), mode="bilinear", align_corners=False).clamp(0, 1)
        expected = (expert.global_logits(x).argmax(1) == data.labels).float().mean()
    assert r["images"] == len(data) and r["accuracy"] == pytest.approx(float(expected))


def test_cli_table_and_json(tmp_path, capsys):
    a = mlp_bundle(tmp_path / "a", [0, 1], constant=0)
    b = mlp_bundle(tmp_path / "b", [4, 5], constant=5)
    out = tmp_path / "eval.json"
    res = cli(capsys, "--quiet", "evaluate", a, b, "--dataset", "mnist", "--json", out)
    assert res.code == 0, res.err
    overall, per_class = (table_rows(part) for part in res.out.split("per class (%)"))
    assert overall == {"1": ["a", "mlp", "0,1", "400", "50.00"], "2": ["b", "mlp", "4,5", "400", "50.00"]}
    assert per_class == {"0": ["100.0", "–"], "1": ["0.0", "–"], "4": ["–", "0.0"], "5": ["–", "100.0"]}
    saved = json.loads(out.read_text())["results"]
    assert [r["name"] for r in saved] == ["a", "b"] and [r["accuracy"] for r in saved] == [0.5, 0.5]


def test_class_names_must_match_the_dataset(tmp_path, capsys):
    bundle = mlp_bundle(tmp_path / "pets", [0, 1], names=["cat", "dog"])
    res = cli(capsys, "evaluate", bundle, "--dataset", "mnist")
    assert_one_error_line(res, "bundle 'pets' calls class 0 'cat' but dataset 'mnist' calls it '0'")


def test_channel_mismatch_is_one_line(tmp_path, capsys):
    bundle = mlp_bundle(tmp_path / "rgb", [0, 1], channels=3)
    res = cli(capsys, "evaluate", bundle, "--dataset", "mnist")
    assert_one_error_line(res, "takes 3-channel images but dataset 'mnist' has 1-channel images")


def test_bad_split_and_missing_bundle(tmp_path, capsys):
    bundle = mlp_bundle(tmp_path / "a", [0, 1])
    assert_one_error_line(cli(capsys, "evaluate", bundle, "--dataset", "mnist", "--split", "val"),
                          "split must be 'train' or 'test', got 'val'")
    assert cli(capsys, "evaluate", tmp_path / "nope", "--dataset", "mnist").code == 2


def test_agrees_with_the_accuracy_training_wrote_on_the_card(tmp_path):
    from exmodel.config import ExpertConfig
    from exmodel.experts.train import train_expert
    from exmodel.scenarios import build_stream

    stream = build_stream(load_dataset("mnist"), "nc", 5, seed=0)
    expert = train_expert(stream, stream[1], ExpertConfig(arch="lenet", epochs=1, batch_size=64), seed=0)
    save_bundle(expert, tmp_path / "e")
    r = evaluate_bundle(tmp_path / "e", "mnist")
    assert r["classes"] == sorted(stream[1].classes) and r["images"] == len(stream[1].test)
    assert r["accuracy"] == pytest.approx(expert.card.test_accuracy, abs=1e-6)
