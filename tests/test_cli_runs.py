"""End-to-end runs of the ``exmodel`` CLI: what a run writes, determinism, resume after SIGKILL, report, export.

Every run here is the tiny but real config of :mod:`helpers` (embedded MNIST subset, 5 LeNet experts
trained for one epoch), so each takes a few seconds on one core. The reference run is made once per
module; the resume tests kill a real ``exmodel run`` process and start it again on the same ``--out``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (PNG_MAGIC, STRATEGIES, TINY_CONFIG, cli, deterministic_part, exmodel_command, read_events,
                     since_last_start, subprocess_env, wait_for, write_config)

from exmodel.cli import main
from exmodel.config import load_config
from exmodel.data import load_dataset
from exmodel.models import build_model
from exmodel.runner import stream_for

RUN_FILES = ("results.json", "results.csv", "table.md", "environment.json", "events.jsonl", "config.yaml",
             "accuracy_matrices.png", "stream_accuracy.png", "state_kept.png")


@pytest.fixture(scope="module")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The same folder tests/conftest.py exports as EXMODEL_CACHE_DIR (module fixtures run before it).
    return tmp_path_factory.getbasetemp() / "expert-cache"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "tiny.yaml")


def _run(config: Path, out: Path, cache: Path, *args: str) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("EXMODEL_DATA_DIR", raising=False)
        code = main(["-q", "run", str(config), "--out", str(out), "--cache-dir", str(cache), *args])
    assert code == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tiny_config: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the tiny config; its folder."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(tiny_config, out, session_cache)
    return out


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def _leftover_tmp(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------- one run
def test_run_writes_results_with_schema(reference: Path) -> None:
    results = _results(reference)
    assert isinstance(results["scenario"], str) and results["scenario"] == "mnist_nc"
    assert list(results["strategies"]) == list(STRATEGIES)
    for name, entry in results["strategies"].items():
        assert isinstance(entry["ex_model"], bool), name
        acc = entry["stream_accuracy"]
        assert set(acc) >= {"mean", "std", "per_seed"}
        assert len(acc["per_seed"]) == 1 and acc["mean"] == acc["per_seed"][0] and acc["std"] == 0.0
        assert 0.0 <= acc["mean"] <= 1.0
        assert entry["wall_time_s"]["mean"] > 0.0
        matrix = entry["accuracy_matrix"]["per_seed"][0]
        assert len(matrix) == 5 and all(len(row) == 5 and all(0.0 <= v <= 1.0 for v in row) for row in matrix)
        # 20 test images per class, 2 classes per experience: every accuracy is a multiple of 1/40,
        # and the stream accuracy (equal-sized experiences) is the mean of the last row.
        assert all(math.isclose(v * 40, round(v * 40), abs_tol=1e-9) for v in matrix[-1])
        assert math.isclose(acc["mean"], sum(matrix[-1]) / 5, abs_tol=1e-12)
        cell = json.loads((reference / "cells" / name / "seed-0.json").read_text())
        assert cell["stream_accuracy"] == acc["mean"] and cell["accuracy_matrix"] == matrix
    strategies = results["strategies"]
    assert strategies["param_avg"]["ex_model"] is True
    assert strategies["finetune"]["ex_model"] is False and strategies["oracle"]["ex_model"] is False
    assert strategies["oracle"]["stream_accuracy"]["mean"] >= strategies["ensemble_avg"]["stream_accuracy"]["mean"]
    # The oracle routes each test image to the expert of its experience: its accuracy on experience
    # k is expert k's accuracy on its own classes, which the expert card recorded after training.
    oracle_last_row = strategies["oracle"]["accuracy_matrix"]["per_seed"][0][-1]
    own = results["experts"]["per_seed"][0]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(oracle_last_row, own, strict=True))


def test_state_bytes_bounded_for_param_avg_growing_for_ensemble(reference: Path) -> None:
    strategies = _results(reference)["strategies"]
    (avg,) = strategies["param_avg"]["state_bytes_per_step"]
    (ens,) = strategies["ensemble_avg"]["state_bytes_per_step"]
    lenet_bytes = 4 * sum(t.numel() for t in build_model("lenet", num_classes=10).state_dict().values())
    assert len(avg) == len(ens) == 5
    assert len(set(avg)) == 1 and avg[0] >= lenet_bytes  # one network, whatever the step
    assert ens == [ens[0] * (k + 1) for k in range(5)]  # one more expert kept at each step
    assert ens[0] >= lenet_bytes


def test_run_writes_every_report_file(reference: Path, tiny_config: Path) -> None:
    for name in RUN_FILES:
        assert (reference / name).is_file(), name
    for png in (name for name in RUN_FILES if name.endswith(".png")):
        assert (reference / png).read_bytes()[:8] == PNG_MAGIC
    results = _results(reference)
    with open(reference / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    stream_rows = {r["strategy"]: float(r["value"]) for r in rows if r["metric"] == "stream_accuracy"}
    assert stream_rows == {n: e["stream_accuracy"]["mean"] for n, e in results["strategies"].items()}
    table = (reference / "table.md").read_text()
    for name, entry in results["strategies"].items():
        assert f"| {name} |" in table
        assert f"{100 * entry['stream_accuracy']['mean']:.2f}" in table
    env = json.loads((reference / "environment.json").read_text())
    assert env["seeds"] == [0] and env["data_dir"] is None and env["torch"]
    saved = yaml.safe_load((reference / "config.yaml").read_text())
    assert saved == load_config(tiny_config).model_dump()
    events = read_events(reference / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_done"
    assert [e["strategy"] for e in events if e["event"] == "cell_done"] == list(STRATEGIES)
    assert not _leftover_tmp(reference)


# ----------------------------------------------------------------------------------------- determinism
def test_same_seed_twice_gives_identical_results(reference: Path, tiny_config: Path, session_cache: Path,
                                                 tmp_path: Path) -> None:
    fresh_cache = tmp_path / "cache"  # experts trained again from scratch, not read from the cache
    again = _run(tiny_config, tmp_path / "run", fresh_cache)
    first = _results(reference)
    for name in STRATEGIES:
        assert deterministic_part(again["strategies"][name]) == deterministic_part(first["strategies"][name]), name
    cards = [sorted(c.glob("experts/tiny-*/expert-*/card.json")) for c in (session_cache, fresh_cache)]
    assert len(cards[0]) == len(cards[1]) == 5
    hashes = [[json.loads(p.read_text())["weights_sha256"] for p in group] for group in cards]
    assert hashes[0] == hashes[1]  # bit-identical experts


# ----------------------------------------------------------------------------------------- resume
def _start(config: Path, out: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([*exmodel_command(), "-q", "run", str(config), "--out", str(out)],
                            env=subprocess_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc.stderr.close()


@pytest.mark.slow
def test_resume_after_kill_between_cells(reference: Path, tiny_config: Path, session_cache: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    events_file = out / "events.jsonl"

    def a_cell_is_done() -> bool:
        return events_file.is_file() and any(e["event"] == "cell_done" for e in read_events(events_file))

    proc = _start(tiny_config, out, session_cache)
    wait_for(a_cell_is_done, timeout=120, what="the first finished cell", proc=proc)
    _kill(proc)
    before_kill = read_events(events_file)
    done_before = {e["strategy"] for e in before_kill if e["event"] == "cell_done"}
    assert "oracle" in done_before
    assert "run_done" not in [e["event"] for e in before_kill] and not (out / "results.json").exists()
    assert len(done_before) < len(STRATEGIES)

    resumed = _run(tiny_config, out, session_cache)  # the same command again
    latest = since_last_start(read_events(events_file))
    skipped = {e["strategy"] for e in latest if e["event"] == "cell_skipped"}
    rerun = [e["strategy"] for e in latest if e["event"] == "cell_done"]
    assert skipped == done_before
    assert sorted(rerun) == sorted(set(STRATEGIES) - done_before)
    assert not [e for e in latest if e["event"] == "expert_trained"]
    first = _results(reference)
    for name in STRATEGIES:
        assert deterministic_part(resumed["strategies"][name]) == deterministic_part(first["strategies"][name]), name
    assert not _leftover_tmp(out)


@pytest.mark.slow
def test_resume_after_kill_during_expert_training(tmp_path: Path) -> None:
    # Two experiences of 5 classes, 30 epochs: about a second per expert, so the kill lands while
    # the second expert trains (the first is on disk, the second is not).
    config = write_config(tmp_path / "slow.yaml", {
        **TINY_CONFIG,
        "scenario": {**TINY_CONFIG["scenario"], "n_experiences": 2},
        "expert": {**TINY_CONFIG["expert"], "epochs": 30},
        "strategies": [{"name": "oracle"}],
    })
    cache, out = tmp_path / "cache", tmp_path / "run"
    proc = _start(config, out, cache)
    wait_for(lambda: any(cache.glob("experts/*/expert-000/card.json")), timeout=120,
             what="the first expert in the cache", proc=proc)
    _kill(proc)
    (first_card,) = cache.glob("experts/*/expert-000/card.json")
    stream_dir = first_card.parent.parent
    assert not (stream_dir / "expert-001").exists(), "the kill came too late: both experts were trained"
    mtime = first_card.stat().st_mtime_ns

    results = _run(config, out, cache)
    assert first_card.stat().st_mtime_ns == mtime  # not retrained, not rewritten
    assert (stream_dir / "expert-001" / "card.json").is_file()
    latest = since_last_start(read_events(out / "events.jsonl"))
    assert [e["experience"] for e in latest if e["event"] == "expert_trained"] == [1]
    assert 0.0 <= results["strategies"]["oracle"]["stream_accuracy"]["mean"] <= 1.0
    assert not _leftover_tmp(out)


# ----------------------------------------------------------------------------------------- report
def test_report_merges_runs(capsys: pytest.CaptureFixture[str], reference: Path, tiny_config: Path,
                            session_cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    _run(tiny_config, other, session_cache, "--seeds", "1", "--set", "strategies=[{name: oracle}]")
    merged_md = tmp_path / "merged.md"
    result = cli(capsys, "report", reference, other, "--out", merged_md)
    assert result.code == 0, result.err
    a = _results(reference)["strategies"]["oracle"]["stream_accuracy"]["mean"]
    b = _results(other)["strategies"]["oracle"]["stream_accuracy"]["mean"]
    mean, std = 100 * (a + b) / 2, 100 * abs(a - b) / math.sqrt(2)  # sample std (ddof=1) of two values
    expected = f"{mean:.2f} ± {std:.2f}"
    assert expected in result.out
    text = merged_md.read_text()
    assert f"| oracle | ✗ | {expected} |" in text
    for name in STRATEGIES:
        assert f"| {name} |" in text and name in result.out
    assert "seeds 0, 1" in text


def test_report_refuses_a_seed_twice(capsys: pytest.CaptureFixture[str], reference: Path, tmp_path: Path) -> None:
    result = cli(capsys, "report", reference, reference, "--out", tmp_path / "merged.md")
    assert result.code == 2
    assert result.err.splitlines() == [
        "error: scenario mnist_nc: strategy 'oracle': seed 0 appears in more than one run; report each seed once"
    ]
    assert not (tmp_path / "merged.md").exists()


# ----------------------------------------------------------------------------------------- export
def test_train_experts_export_then_inspect(capsys: pytest.CaptureFixture[str], reference: Path, tiny_config: Path,
                                           session_cache: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    result = cli(capsys, "-q", "train-experts", str(tiny_config), "--cache-dir", session_cache, "--export", export)
    assert result.code == 0, result.err
    bundles = sorted((export / "seed-0").iterdir())
    assert [b.name for b in bundles] == [f"expert-{i:03d}" for i in range(5)]
    stream = stream_for(load_config(tiny_config), load_dataset("mnist"), 0)
    for k, path in enumerate(bundles):
        shown = cli(capsys, "inspect", path)
        assert shown.code == 0 and shown.err == ""
        assert "lenet" in shown.out and "verified: True" in shown.out
        info = json.loads(cli(capsys, "inspect", path, "--json").out)
        assert info["arch"] == "lenet" and info["verified"] is True
        assert info["class_ids"] == list(range(10))  # full head: one output per class of MNIST
        assert sorted(info["trained_class_ids"]) == sorted(stream[k].classes)
        assert str(info["class_ids"]) in shown.out and f"classes {info['trained_class_ids']}" in result.out
