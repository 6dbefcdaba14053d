"""The benchmark scripts run end to end and write what they promise (tiny settings)."""

import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_config(tmp_path):
    cfg = {"name": "tiny_ed", "scenario": {"dataset": "mnist", "kind": "nc", "n_experiences": 2,
                                           "train_per_class": 15, "test_per_class": 5},
           "expert": {"arch": "lenet_bn", "epochs": 1, "batch_size": 16},
           "strategies": [{"name": "oracle"},
                          {"name": "noise_ed", "params": {"buffer_size": 20, "iterations": 2, "batch_size": 8}}],
           "reference": {"oracle": {"mean": 0.99, "std": 0.0}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ed_benchmark_writes_results_shaped_json(tmp_path):
    out = tmp_path / "bench.json"
    code = load_script("ed_split_mnist").main(["--config", str(tiny_config(tmp_path)), "--seeds", "0",
                                               "--out", str(out), "--run-dir", str(tmp_path / "run")])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data["strategies"]) == {"oracle", "noise_ed"}
    entry = data["strategies"]["noise_ed"]
    assert entry["ex_model"] is True and len(entry["stream_accuracy"]["per_seed"]) == 1
    for key in ("wall_time_s", "macs_per_sample", "state_bytes"):
        assert entry[key]["mean"] > 0
    assert data["environment"]["torch"].startswith("2.")


def test_ed_benchmark_runs_a_subset_and_rejects_unknown_names(tmp_path, capsys):
    bench = load_script("ed_split_mnist")
    out = tmp_path / "bench.json"
    base = ["--config", str(tiny_config(tmp_path)), "--seeds", "0", "--out", str(out)]
    assert bench.main(base + ["--strategies", "noise_ed", "--run-dir", str(tmp_path / "run")]) == 0
    assert set(json.loads(out.read_text())["strategies"]) == {"noise_ed"}
    assert bench.main(base + ["--strategies", "noise_ed,mi_edd"]) == 2
    assert "error: mi_edd not in tiny_ed; available: noise_ed, oracle" in capsys.readouterr().err


def test_buffer_samples_figure(tmp_path):
    out = tmp_path / "samples.png"
    mod = load_script("buffer_samples")  # a few images per class from every source
    assert mod.main(["--config", str(tiny_config(tmp_path)), "--out", str(out), "--per-class", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_buffer_sweep_runs_every_size_and_plots(tmp_path, capsys):
    sweep = load_script("buffer_sweep")
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    base = ["--config", str(tiny_config(tmp_path)), "--out", str(out), "--plot", str(png),
            "--params", '{"iterations": 2, "batch_size": 8}', "--run-dir", str(tmp_path / "run")]
    assert sweep.main(base + ["--strategies", "noise_ed,replay_ed", "--sizes", "4,20",
                              "--params-for", 'noise_ed={"source_params": {"std": 0.2}}']) == 0
    data = json.loads(out.read_text())
    assert data["sizes"] == [4, 20] and set(data["strategies"]) == {"noise_ed", "replay_ed"}
    replay = data["strategies"]["replay_ed"]
    assert replay["ex_model"] is False and len(replay["stream_accuracy"]["mean"]) == 2
    cells = json.loads((tmp_path / "run" / "cells" / "replay_ed-N20" / "seed-0.json").read_text())
    assert cells["type"] == "replay_ed"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "replay_ed        N=4:" in capsys.readouterr().out
    assert sweep.main(base + ["--strategies", "oracle"]) == 2
    assert "error: not ED strategies: oracle" in capsys.readouterr().err
    assert sweep.main(base + ["--strategies", "noise_ed", "--params-for", "mi_ed={}"]) == 2
    assert "error: not ED strategies: mi_ed (--params-for)" in capsys.readouterr().err
    assert sweep.main(base + ["--strategies", "noise_ed", "--params", "[1]"]) == 2
    assert "error: --params(-for) must be JSON objects" in capsys.readouterr().err
    assert sweep.main(base + ["--strategies", "noise_ed", "--sizes", "0,4"]) == 2
    assert "error: sizes must be ≥ 1" in capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    noise = [s for s in config["strategies"] if s["name"] == "noise_ed-N4"][0]
    assert noise["params"] == {"iterations": 2, "batch_size": 8, "source_params": {"std": 0.2}, "buffer_size": 4}
