"""``exmodel consolidate``: bundles of different architectures in, one validated bundle out."""

import pytest
import torch

from exmodel.cli import main
from exmodel.experts.bundle import load_bundle
from tests import helpers


def make_bundle(path, arch, classes, **kw):
    return helpers.make_bundle(path, arch, classes, num_global_classes=4, **kw)


@pytest.mark.parametrize("source", ["noise", "inversion"])
def test_consolidates_two_architectures_and_normalizations(tmp_path, capsys, source):
    a = make_bundle(tmp_path / "a", "mlp", [0, 1], hidden=[16])
    b = make_bundle(tmp_path / "b", "lenet_bn", [2, 3], shape=(1, 12, 12), mean=0.1, std=0.3, seed=1)
    out = tmp_path / "merged"
    code = main(["--quiet", "consolidate", str(a), str(b), "--source", source, "--arch", "mlp", "-o", str(out),
                 "--set", "buffer_size=40", "--set", "iterations=5", "--set", "batch_size=8",
                 "--set", "arch_kwargs={hidden: [8]}", "--set",
                 "source_params={steps: 3, batch_size: 8}" if source == "inversion" else "batch_size=8"])
    assert code == 0, capsys.readouterr().err
    merged = load_bundle(out)  # validated on load
    c = merged.card
    assert c.arch == "mlp" and c.class_ids == [0, 1, 2, 3] and c.trained_class_ids == [0, 1, 2, 3]
    assert c.input_shape == (1, 12, 12)  # the larger resolution; the 8×8 expert sees resized inputs
    assert c.training["experts"] == ["a", "b"] and len(c.training["expert_sha256"]) == 2
    assert merged(torch.rand(3, 1, 12, 12)).shape == (3, 4)


def test_contradicting_class_names_rejected_nothing_written(tmp_path, capsys):
    a = make_bundle(tmp_path / "a", "mlp", [0, 1], hidden=[8])
    b = make_bundle(tmp_path / "b", "mlp", [1, 2], names=["one", "2"], hidden=[8])
    out = tmp_path / "merged"
    assert main(["consolidate", str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: experts disagree on class 1: '1' in a but 'one' in b"]
    assert not out.exists()


def test_irreconcilable_input_shapes_rejected(tmp_path, capsys):
    a = make_bundle(tmp_path / "a", "mlp", [0, 1], hidden=[8])
    b = make_bundle(tmp_path / "b", "mlp", [2, 3], shape=(3, 8, 8), hidden=[8])
    assert main(["consolidate", str(a), str(b), "-o", str(tmp_path / "m")]) == 2
    assert "different channel counts" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_unknown_source(tmp_path, capsys):
    a = make_bundle(tmp_path / "a", "mlp", [0, 1], hidden=[8])
    assert main(["consolidate", str(a), "--source", "magic", "-o", str(tmp_path / "m")]) == 2
    assert "unknown source 'magic'" in capsys.readouterr().err


def test_smooth_front_end_cannot_be_exported(tmp_path, capsys):
    a = make_bundle(tmp_path / "a", "mlp", [0, 1], hidden=[8])
    assert main(["consolidate", str(a), "--set", "smooth=2", "-o", str(tmp_path / "m")]) == 2
    assert "cannot be exported" in capsys.readouterr().err
