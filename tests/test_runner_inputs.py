"""The runner gives each strategy what it declares it consumes, and trains experts only when needed."""

from __future__ import annotations

import json
import time

from helpers import TINY_CONFIG, cli, read_events, write_config

from exmodel.strategies import list_strategies, strategy_class
from exmodel.strategies.base import INPUTS


def test_every_strategy_declares_what_it_consumes():
    for name in list_strategies():
        consumes = strategy_class(name).consumes
        assert consumes and consumes <= INPUTS, name
    assert strategy_class("finetune").consumes == {"data"} == strategy_class("joint").consumes
    assert strategy_class("mi_ed").consumes == {"expert"} and strategy_class("oracle").consumes == {"expert"}
    assert strategy_class("replay_ed").consumes == {"expert", "data"}
    # capabilities are class-level: keeping real images (joint's data, replay's buffer) is not exemplar-free
    assert not strategy_class("joint").exemplar_free and not strategy_class("replay_ed").exemplar_free
    assert strategy_class("finetune").exemplar_free and strategy_class("mi_ed").exemplar_free


def test_a_run_without_expert_consumers_trains_no_expert(capsys, tmp_path, monkeypatch):
    from exmodel.strategies.finetune import Finetune

    seen = []
    observe = Finetune.observe

    def spy(self, step, expert, data, progress=None):
        seen.append((expert, data is not None))
        return observe(self, step, expert, data, progress)

    monkeypatch.setattr(Finetune, "observe", spy)
    config = write_config(tmp_path / "c.yaml", {**TINY_CONFIG, "strategies": [{"name": "finetune",
                                                                              "params": {"epochs": 1}}]})
    cache = tmp_path / "cache"
    result = cli(capsys, "-q", "run", config, "--out", tmp_path / "run", "--cache-dir", cache)
    assert result.code == 0, result.err
    events = read_events(tmp_path / "run" / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert "experts_skipped" in kinds and "experts_ready" not in kinds
    losses = [e["loss"] for e in events if e["event"] == "step_done"]  # each step's training loss, logged
    assert len(losses) == 5 and all(set(loss) == {"ce"} and loss["ce"] > 0 for loss in losses), losses
    assert not cache.exists()  # nothing trained, nothing cached
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["experts"] is None and results["strategies"]["finetune"]["stream_accuracy"]["mean"] > 0
    assert "No experts" in (tmp_path / "run" / "table.md").read_text()
    assert results["strategies"]["finetune"]["exemplar_free"] is True
    assert "| Strategy | Ex-model | Exemplar-free |" in (tmp_path / "run" / "table.md").read_text()
    assert cli(capsys, "report", tmp_path / "run").code == 0
    assert seen == [(None, True)] * 5  # the data of each step, and no expert


def test_a_misspelt_parameter_of_the_last_strategy_fails_before_any_training(capsys, tmp_path):
    strategies = [{"name": n} for n in ("oracle", "ensemble_avg", "min_entropy", "param_avg")]
    strategies.append({"name": "mi_ed", "params": {"iteratoins": 5}})
    config = write_config(tmp_path / "c.yaml", {**TINY_CONFIG, "strategies": strategies})
    t0 = time.perf_counter()
    result = cli(capsys, "run", config, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    seconds = time.perf_counter() - t0
    assert result.code == 2 and "iteratoins" in result.err and len(result.err.splitlines()) == 1, result.err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    assert seconds < 2.0, seconds
