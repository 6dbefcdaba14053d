"""Experts of any architecture from torch.export files and live modules: exact, safe, bundled.

The experts here are trained outside exmodel by ``examples/train_outside_experts.py`` (plain PyTorch,
on the embedded MNIST subset laid out as a user's data folder), as a user would bring them.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import exmodel
from exmodel.cli import main
from exmodel.errors import BundleError
from exmodel.experts.bundle import load_bundle, save_bundle
from exmodel.experts.imports import import_program
from exmodel.experts.program import ProgramNet
from exmodel.experts.pt2 import read_pt2

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "exmodel" / "data" / "embedded"
sys.path.insert(0, str(ROOT / "examples"))
from train_outside_experts import MLP, SmallCNN  # noqa: E402


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """mlp.pt/.pt2 (digits 0-4, no BN) and cnn.pt/.pt2 (digits 5-9, BN), trained by the plain script."""
    root = tmp_path_factory.mktemp("outside")
    data = root / "data" / "mnist"
    data.mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (data / f"{split}-{kind}-ubyte.gz").symlink_to(EMBEDDED / f"mnist-{split}-{kind}-ubyte.gz")
    out = root / "models"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "examples" / "train_outside_experts.py"), "--data-dir",
                    str(root / "data"), "--out", str(out), "--epochs", "1", "--limit", "600"],
                   check=True, env=env, capture_output=True)
    return out


def _module(outside: Path, name: str) -> nn.Module:
    m = MLP() if name == "mlp" else SmallCNN()
    m.load_state_dict(torch.load(outside / f"{name}.pt", weights_only=True))
    return m.eval()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a .pt2 archive, passing each member's (name, bytes) through ``edit`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def _edit_json(suffix: str, change):
    def edit(name: str, data: bytes):
        if name.endswith(suffix):
            obj = json.loads(data)
            change(obj)
            return json.dumps(obj).encode()
        return data
    return edit


class _Payload:
    """Unpickling this runs ``open(path, 'w')``: a harmless stand-in for any code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name, bn_layers", [("mlp", 0), ("cnn", 2)])
def test_program_gives_the_modules_logits_exactly(outside, name, bn_layers):
    program, tensors = read_pt2(outside / f"{name}.pt2")
    net = ProgramNet(program, tensors)
    x = torch.randn(37, 1, 28, 28)  # another batch size than the export's example
    with torch.no_grad():
        assert torch.equal(net(x), _module(outside, name)(x))
        assert torch.equal(net.forward_head(net.forward_features(x)), net(x))
    assert len(net.bn_layers()) == bn_layers
    assert "stack_trace" not in json.dumps(program)  # the sender's file paths are not kept


def test_fixed_batch_program_runs_any_batch_in_chunks(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    torch.export.save(torch.export.export(module, (torch.zeros(3, 1, 8, 8),)), tmp_path / "fixed.pt2")
    net = ProgramNet(*read_pt2(tmp_path / "fixed.pt2"))
    assert net.batch == 3
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), module(x), rtol=0, atol=1e-6)


def test_import_writes_a_bundle_that_needs_no_code(outside, tmp_path):
    expert = import_program(outside / "cnn.pt2", classes=[5, 6, 7, 8, 9], dataset="mnist", mean=[0.1307], std=[0.3081])
    c = expert.card
    assert (c.arch, c.num_global_classes, c.class_names, list(c.input_shape)) == ("program", 10, list("56789"), [1, 28, 28])
    save_bundle(expert, tmp_path / "cnn")
    assert sorted(os.listdir(tmp_path / "cnn")) == ["card.json", "program.json", "weights.safetensors"]
    loaded = load_bundle(tmp_path / "cnn")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), _module(outside, "cnn")((x - 0.1307) / 0.3081))
    program = tmp_path / "cnn" / "program.json"
    text = program.read_text()
    assert "aten.relu.default" in text
    program.write_text(text.replace("aten.relu.default", "aten.sigmoid.default"))
    with pytest.raises(BundleError, match="SHA-256 of program.json"):
        load_bundle(tmp_path / "cnn")


def test_card_problems_are_reported_together(outside):
    with pytest.raises(BundleError) as err:
        import_program(outside / "mlp.pt2", classes=[0, 1, 2], mean=[0.5, 0.2], std=[0.0])
    msg = str(err.value)
    assert "the model has 5 outputs but 3 classes were given" in msg
    assert "normalization needs 1 mean and std values, got 2 and 1" in msg and "std values must be > 0" in msg


def test_hostile_pickles_are_refused_and_never_run(outside, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = pickle.dumps(_Payload(marker))
    hostile = _rewrite(outside / "mlp.pt2", tmp_path / "sample.pt2",
                       lambda n, d: evil if n.endswith("sample_inputs/model.pt") else d)
    code = main(["import", str(hostile), "--classes", "0-4", "-o", str(tmp_path / "b")])
    assert code == 2 and not marker.exists() and not (tmp_path / "b").exists()

    def pickled_weight(name: str, data: bytes):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            cfg["config"]["fc1.weight"]["use_pickle"] = True
            return json.dumps(cfg).encode()
        return evil if name.endswith("data/weights/weight_0") else data
    with pytest.raises(BundleError, match="refused as hostile|stored as a pickle"):
        read_pt2(_rewrite(outside / "mlp.pt2", tmp_path / "weight.pt2", pickled_weight))
    assert not marker.exists()


def test_benign_pickled_weight_is_refused_too(outside, tmp_path):
    def pickled_weight(name: str, data: bytes):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            cfg["config"]["fc1.weight"]["use_pickle"] = True
            return json.dumps(cfg).encode()
        return data
    with pytest.raises(BundleError, match="tensor 'fc1.weight' is stored as a pickle, which exmodel never loads"):
        read_pt2(_rewrite(outside / "mlp.pt2", tmp_path / "w.pt2", pickled_weight))


def test_operator_outside_aten_is_refused(outside, tmp_path, capsys):
    def custom(obj):
        obj["graph_module"]["graph"]["nodes"][1]["target"] = "torch.ops.mylib.exfiltrate.default"
    hostile = _rewrite(outside / "mlp.pt2", tmp_path / "op.pt2", _edit_json("models/model.json", custom))
    assert main(["import", str(hostile), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.ops.mylib.exfiltrate.default, which is not an ATen operator" in err[0]
    assert not (tmp_path / "b").exists()


def test_guards_and_shape_expressions_are_never_evaluated(outside, tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')"

    def plant(obj):
        obj["guards_code"] = [code]
        obj["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]["as_expr"]["expr_str"] = code
    hostile = _rewrite(outside / "mlp.pt2", tmp_path / "g.pt2", _edit_json("models/model.json", plant))
    expert = import_program(hostile, classes=[0, 1, 2, 3, 4])
    assert expert(torch.rand(2, 1, 28, 28)).shape == (2, 5) and not marker.exists()


def test_python_api_from_module_and_consolidate_warns_when_an_expert_is_lost(outside, tmp_path):
    a = exmodel.Expert.from_file(outside / "mlp.pt2", classes=range(5), normalization=([0.5], [0.5]), dataset="mnist")
    b = exmodel.Expert.from_module(_module(outside, "cnn"), classes=[5, 6, 7, 8, 9], input_shape=(1, 28, 28),
                                   normalization=(0.1307, 0.3081), dataset="mnist", name="cnn")
    from exmodel.data import load_dataset

    test = load_dataset("mnist").test  # the embedded subset
    keep = test.labels >= 5
    x01 = test.images[keep].float() / 255 if test.images.dtype == torch.uint8 else test.images[keep]
    with torch.no_grad():
        by_hand = float(((_module(outside, "cnn")((x01 - 0.1307) / 0.3081).argmax(1) + 5) == test.labels[keep]).float().mean())
    assert exmodel.evaluate(b, "mnist")["accuracy"] == pytest.approx(by_hand, abs=1e-6)  # its own digits
    tiny = {"iterations": 1, "buffer_size": 40, "batch_size": 8, "source_params": {"steps": 2, "batch_size": 8}}
    with pytest.warns(exmodel.ExpertNotAbsorbed, match="was not absorbed"):
        model = exmodel.consolidate([a, b], arch="mlp", arch_kwargs={"hidden": [16]}, params=tiny,
                                    source="inversion")
    rows = model.card.training["agreement"]
    assert [r["expert"] for r in rows] == ["mlp", "cnn"] and all(r["held_out"] for r in rows)
    assert model.card.training["warnings"] and all(0 <= r["agreement"] <= 1 for r in rows)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_cli_import_then_consolidate_prints_agreement_and_warning(outside, tmp_path, capsys):
    for name, classes, mean, std in (("mlp", "0-4", "0.5", "0.5"), ("cnn", "5-9", "0.1307", "0.3081")):
        assert main(["-q", "import", str(outside / f"{name}.pt2"), "--classes", classes, "--dataset", "mnist",
                     "--mean", mean, "--std", std, "-o", str(tmp_path / name)]) == 0
    capsys.readouterr()
    code = main(["consolidate", str(tmp_path / "mlp"), str(tmp_path / "cnn"), "--arch", "mlp", "--quiet",
                 "-o", str(tmp_path / "merged"), "--source", "inversion", "--iterations", "1", "--generator-steps", "2",
                 "--set", "buffer_size=40", "--set", "batch_size=8", "--set", "arch_kwargs={hidden: [8]}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "mlp: classes [0, 1, 2, 3, 4], agreement" in out and "held-out synthetic samples" in out
    assert "warning: expert" in err and "was not absorbed" in err
    card = load_bundle(tmp_path / "merged").card
    assert card.training["warnings"] and card.training["iterations"] == 1
    assert card.training["source_params"]["steps"] == 2
    # by default the source is chosen from the experts: the MLP has no BatchNorm, so the pool, which
    # trains no generator
    code = main(["consolidate", str(tmp_path / "mlp"), str(tmp_path / "cnn"), "-o", str(tmp_path / "m2"),
                 "--generator-steps", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and "source: pool (expert(s) 'mlp' have no BatchNorm statistics" in out
    assert "--generator-steps does not apply to --source pool (it trains no generator)" in err
    assert "source 'pool' was chosen because expert(s) 'mlp' have no BatchNorm" in err and not (tmp_path / "m2").exists()


def test_cli_and_python_api_give_the_same_model(outside, tmp_path):
    for name, classes, mean, std in (("mlp", "0-4", "0.5", "0.5"), ("cnn", "5-9", "0.1307", "0.3081")):
        assert main(["-q", "import", str(outside / f"{name}.pt2"), "--classes", classes, "--dataset", "mnist",
                     "--mean", mean, "--std", std, "-o", str(tmp_path / name)]) == 0
    assert main(["-q", "consolidate", str(tmp_path / "mlp"), str(tmp_path / "cnn"), "--arch", "mlp", "--seed", "3",
                 "-o", str(tmp_path / "cli"), "--source", "inversion", "--iterations", "3", "--generator-steps", "3",
                 "--set", "buffer_size=60", "--set", "batch_size=16", "--set", "arch_kwargs={hidden: [8]}"]) == 0
    experts = [exmodel.Expert.from_file(outside / "mlp.pt2", classes=range(5), normalization=(0.5, 0.5),
                                        dataset="mnist", name="mlp"),
               exmodel.Expert.from_file(outside / "cnn.pt2", classes=range(5, 10), normalization=(0.1307, 0.3081),
                                        dataset="mnist", name="cnn")]
    from exmodel.consolidation import budget_params

    params = budget_params({"buffer_size": 60, "batch_size": 16}, iterations=3, generator_steps=3)
    with pytest.warns(exmodel.ExpertNotAbsorbed):
        api = exmodel.consolidate(experts, tmp_path / "api", arch="mlp", arch_kwargs={"hidden": [8]}, params=params,
                                  seed=3, source="inversion")
    cli = load_bundle(tmp_path / "cli")
    assert api.card.weights_sha256 == cli.card.weights_sha256
    assert api.card.training["agreement"] == cli.card.training["agreement"]


def test_a_pt2_given_as_a_bundle_says_how_to_import_it(outside, capsys):
    assert main(["inspect", str(outside / "mlp.pt2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a torch.export program, not an exmodel bundle; import it first" in err[0]
