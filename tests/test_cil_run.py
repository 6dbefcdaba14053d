"""A class-incremental run end to end through the CLI, on the embedded MNIST subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import PNG_MAGIC, cli, read_events, write_config

CIL = {
    "scenario": {"dataset": "mnist", "kind": "cil", "protocol": "half_base", "n_tasks": 5,
                 "train_per_class": 30, "test_per_class": 10},
    "strategies": [{"name": "ft", "params": {"iterations": 20, "lr": 0.001}},
                   {"name": "er", "params": {"iterations": 20, "lr": 0.001, "memory_per_class": 3}}],
    "seeds": [0],
}


def test_a_cil_run_reports_incremental_accuracy_and_exemplars(capsys, tmp_path):
    out = tmp_path / "run"
    result = cli(capsys, "-q", "run", write_config(tmp_path / "c.yaml", CIL), "--out", out, "--cache-dir", tmp_path / "cache")
    assert result.code == 0, result.err
    assert not (tmp_path / "cache").exists()  # no strategy consumes experts: none trained
    assert any(e["event"] == "experts_skipped" for e in read_events(out / "events.jsonl"))
    cell = json.loads((out / "cells" / "er" / "seed-0.json").read_text())
    R = np.array(cell["accuracy_matrix"], dtype=float)
    assert R.shape == (6, 6)  # a base of 5 classes, then 5 tasks of 1
    counts = np.array([50, 10, 10, 10, 10, 10])  # 10 test images per class
    after = [float((R[i, :i + 1] * counts[:i + 1]).sum() / counts[:i + 1].sum()) for i in range(6)]
    np.testing.assert_allclose(cell["accuracy_after_task"], after)
    assert cell["average_incremental_accuracy"] == pytest.approx(np.mean(after))
    assert cell["final_accuracy"] == pytest.approx(after[-1]) == pytest.approx(cell["stream_accuracy"])
    assert cell["new_accuracy"] == pytest.approx(R[5, 5])
    assert cell["old_accuracy"] == pytest.approx((R[5, :5] * counts[:5]).sum() / 90)  # 9 old classes
    assert cell["exemplar_bytes"] == 10 * 3 * 28 * 28  # 3 uint8 images per class, 10 classes
    ft = json.loads((out / "cells" / "ft" / "seed-0.json").read_text())
    assert ft["exemplar_bytes"] == 0 and ft["exemplar_free"] and not cell["exemplar_free"]
    table = (out / "table.md").read_text()
    assert "Avg. incr. acc. (%)" in table and "Exemplars kept" in table and "23.5 kB" in table
    assert (out / "accuracy_after_task.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "confusion_matrices.png").read_bytes().startswith(PNG_MAGIC)
    results = json.loads((out / "results.json").read_text())
    assert results["strategies"]["er"]["accuracy_after_task"]["per_seed"] == [cell["accuracy_after_task"]]


@pytest.mark.parametrize("scenario, message", [
    ({"protocol": "half_base", "n_tasks": 5, "base_classes": 12}, "base_classes must leave classes for the tasks"),
    ({"protocol": "from_scratch", "n_tasks": 0}, "scenario.n_tasks must be ≥ 1"),
    ({"class_groups": [[0, 1], [1, 2]]}, "class 1 is in task 0 and task 1"),
])
def test_bad_cil_configs_exit_2_before_writing_anything(capsys, tmp_path, scenario, message):
    config = {**CIL, "scenario": {"dataset": "mnist", "kind": "cil", **scenario}}
    out = tmp_path / "run"
    result = cli(capsys, "-q", "run", write_config(tmp_path / "c.yaml", config), "--out", out)
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_exemplar_budget_on_an_exemplar_free_strategy_exits_2(capsys, tmp_path):
    config = {**CIL, "strategies": [{"name": "lwf_mc", "params": {"memory_size": 2000}}]}
    result = cli(capsys, "-q", "run", write_config(tmp_path / "c.yaml", config), "--out", tmp_path / "run")
    assert result.code == 2 and "strategy 'lwf_mc' is exemplar-free" in result.err
    assert not (tmp_path / "run").exists()
