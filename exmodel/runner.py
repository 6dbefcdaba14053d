"""Run an experiment: every strategy of a config, over every seed, on the same expert streams.

Layout of a run directory (``--out``)::

    config.yaml        the resolved config (a restart with a different config is refused)
    environment.json   versions, git commit, seeds, machine
    events.jsonl       what happened, one JSON object per line
    cells/<strategy>/seed-<s>.json   one finished (strategy, seed) cell, written atomically
    results.json, results.csv, table.md, accuracy_matrices.png, stream_accuracy.png, state_kept.png

A run that is interrupted and started again with the same ``--out`` skips the finished cells (and
the experts, which live in the expert cache), so it ends with the same results as an uninterrupted
run. Nothing half-written is ever read as finished: every file is written to a temporary name first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from exmodel.config import RunConfig, claim_run_folder
from exmodel.data import load_dataset, resolve_data_dir
from exmodel.errors import ExmodelError
from exmodel.evaluation import (AccuracyMatrix, accuracy_after_each_task, old_new_accuracy, PeakMemory, Stopwatch, average_accuracy, backward_transfer,
                                confusion_matrix, count_macs, evaluate_predictor, forgetting, per_class_accuracy,
                                state_bytes, stream_accuracy)
from exmodel.experts.zoo import expert_stream
from exmodel.fileio import atomic_write_json, read_text
from exmodel.progress import Progress
from exmodel.reporting.aggregate import aggregate
from exmodel.reporting.records import EventLog, environment
from exmodel.scenarios import CILProtocol, Stream, build_stream, subsample_per_class, validation_split
from exmodel.strategies import Step, StreamInfo, build_strategy, strategy_class
from exmodel.strategies.base import strategy_params


class _PredictModule(torch.nn.Module):
    """Lets the MAC counter run a strategy's ``predict`` like a model's forward."""

    def __init__(self, strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def forward(self, x, task_ids):
        return self.strategy.predict(x, task_ids)


def stream_info(stream: Stream, data_dir=None) -> StreamInfo:
    return StreamInfo(kind=stream.kind, num_classes=stream.num_classes, input_shape=stream.input_shape,
                      mean=stream.mean, std=stream.std, task_classes=tuple(tuple(c) for c in stream.task_classes),
                      n_experiences=len(stream), data_dir=str(data_dir) if data_dir else None)


def run_cell(cfg: RunConfig, strategy_name: str, stream: Stream, experts: list, seed: int, *,
             data_dir=None, progress: Progress | None = None, log=None, save_dir: Path | None = None) -> dict:
    """Run one strategy over one stream; returns the cell record (plain JSON types). A strategy that
    can save its learner (``save_learner``) writes it to ``save_dir/<strategy>-seed<seed>.safetensors``."""
    scfg = next(s for s in cfg.strategies if s.name == strategy_name)
    strategy = build_strategy(scfg.strategy_type, scfg.params, stream_info(stream, data_dir), seed, cfg.device)
    T = len(stream)
    test_sets = [(e.test, e.task_id) for e in stream]
    counts = np.array([len(e.test) for e in stream])
    agnostic, aware = AccuracyMatrix(T, counts), AccuracyMatrix(T, counts)
    clock, step_bytes, exemplar_bytes = Stopwatch(), [], 0
    task = progress.add(f"{strategy_name} seed {seed}", total=T) if progress else None
    with PeakMemory() as mem:
        for exp, expert in zip(stream, experts):
            data = exp.train if "data" in strategy.consumes else None  # ex-model strategies never see data
            expert = expert if "expert" in strategy.consumes else None
            with clock:
                strategy.observe(Step(exp.index, exp.task_id, exp.classes), expert, data, progress=progress)
            step_bytes.append(state_bytes(strategy.state()))
            exemplar_bytes = max(exemplar_bytes, state_bytes(strategy.exemplars()))
            ev = evaluate_predictor(strategy.predict, test_sets, stream.task_classes, stream.num_classes,
                                    cfg.eval_batch_size, cfg.device)
            for j in range(T):
                agnostic.record(exp.index, j, int(ev.correct_agnostic[j]))
                aware.record(exp.index, j, int(ev.correct_aware[j]))
            if log:
                log("step_done", strategy=strategy_name, seed=seed, step=exp.index,
                    accuracy=agnostic.matrix[exp.index].tolist(),
                    state_bytes=step_bytes[-1], loss=strategy.loss_log.get(exp.index))
            if task is not None:
                progress.advance(task)
    if task is not None:
        progress.remove(task)
    if save_dir is not None and hasattr(strategy, "save_learner"):
        saved = strategy.save_learner(Path(save_dir) / f"{strategy_name}-seed{seed}.safetensors")
        if log:
            log("learner_saved", strategy=strategy_name, seed=seed, path=str(saved))
    aware_headline = stream.multi_task
    R, R_aware = agnostic.matrix, aware.matrix
    R_main = R_aware if aware_headline else R
    correct_main = (aware if aware_headline else agnostic).correct
    after_task = accuracy_after_each_task(correct_main, counts)
    old, new = old_new_accuracy(correct_main, counts)
    x = stream[0].test.float_images(slice(0, 1)).to(cfg.device)
    macs = count_macs(_PredictModule(strategy), (x, torch.zeros(1, dtype=torch.long, device=cfg.device)))
    return {
        "strategy": strategy_name, "type": scfg.strategy_type, "seed": seed, "ex_model": strategy.ex_model,
        "exemplar_free": strategy.exemplar_free,
        # Multi-task streams give the task label at test time: their headline numbers are task-aware.
        "accuracy_matrix": R_main.tolist(), "task_aware_accuracy_matrix": R_aware.tolist(),
        "task_agnostic_accuracy_matrix": R.tolist(),
        "stream_accuracy": stream_accuracy(ev.correct_aware if aware_headline else ev.correct_agnostic, counts),
        "task_aware_stream_accuracy": stream_accuracy(ev.correct_aware, counts),
        "task_agnostic_stream_accuracy": stream_accuracy(ev.correct_agnostic, counts),
        # class-incremental view: accuracy on everything seen so far after each task, its mean over the
        # tasks (average incremental accuracy), and the last model on old vs new classes
        "accuracy_after_task": after_task.tolist(), "average_incremental_accuracy": float(after_task.mean()),
        "final_accuracy": float(after_task[-1]), "old_accuracy": old, "new_accuracy": new,
        "exemplar_bytes": exemplar_bytes,
        "average_accuracy": average_accuracy(R_main), "forgetting": forgetting(R_main),
        "backward_transfer": backward_transfer(R_main),
        "wall_time_s": clock.seconds, "macs_per_sample": macs, "peak_memory_bytes": mem.rss_sampled_peak_bytes,
        "peak_memory_increase_bytes": mem.peak_increase_bytes,
        "state_bytes": max(step_bytes), "state_bytes_per_step": step_bytes,
        "confusion_matrix": confusion_matrix(ev.predictions(aware_headline), ev.targets(), stream.num_classes).tolist(),
        "per_class_accuracy": per_class_accuracy(ev.predictions(aware_headline), ev.targets(),
                                                 stream.num_classes).tolist(),
    }


def stream_for(cfg: RunConfig, data, seed: int) -> Stream:
    sc = cfg.scenario
    if sc.validation_fraction:
        data = validation_split(data, sc.validation_fraction, seed)
    if sc.train_per_class or sc.test_per_class:
        data = subsample_per_class(data, sc.train_per_class, sc.test_per_class, seed)
    return build_stream(data, sc.kind, sc.n_experiences, seed, class_order=sc.class_order,
                        shuffle_classes=sc.shuffle_classes, first_experience_classes=sc.first_experience_classes,
                        name=cfg.name, ni_split=sc.ni_split, class_order_seed=sc.class_order_seed,
                        cil=CILProtocol(sc.protocol, sc.n_tasks, sc.base_classes, sc.class_groups))


def experts_for(cfg: RunConfig, data, source: str, seed: int, cache_dir: Path | None, *, progress=None, log=None):
    """The seed's stream and its experts (trained once, then read from the cache)."""
    stream = stream_for(cfg, data, seed)
    fingerprint = f"{cfg.scenario.dataset}:{source}:{len(data.train)}:{len(data.test)}"
    experts, root = expert_stream(stream, cfg.scenario, cfg.expert, seed, fingerprint, cache_dir, device=cfg.device,
                                  progress=progress, on_event=log)
    return stream, experts, root


def _check_out_dir(out: Path, cfg: RunConfig) -> None:
    """A run folder holds one config, up to its seeds (a run gains seeds as it goes: each seed's cells
    are its own)."""
    claim_run_folder(out, cfg, lambda stored, cfg: stored.model_copy(update={"seeds": cfg.seeds}) == cfg)


def _finished_cell(path: Path) -> dict | None:
    """The record of a finished cell, or None when its file is damaged (it is computed again)."""
    try:
        record = json.loads(read_text(path, "cell", ValueError))
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and "stream_accuracy" in record else None


def run_experiment(cfg: RunConfig, out: Path, *, data_dir=None, cache_dir: Path | None = None, download: bool = False,
                   progress: Progress | None = None) -> dict:
    """Run (or resume) ``cfg`` into ``out``; returns the aggregated results."""
    if not cfg.strategies:
        raise ExmodelError("the config lists no strategies; add some under 'strategies:' "
                           "(`exmodel train-experts` trains the experts alone)")
    for s in cfg.strategies:  # fail on a bad strategy name or parameter before any training
        strategy_params(s.strategy_type, s.params, s.name)
    if len({s.name for s in cfg.strategies}) != len(cfg.strategies):
        raise ExmodelError("strategy names in a config must be unique")
    if Path(out).exists() and not Path(out).is_dir():
        raise ExmodelError(f"--out {out} is a file, not a run folder")
    resolved = resolve_data_dir(data_dir)
    data = load_dataset(cfg.scenario.dataset, resolved, download=download)  # fails before anything is written
    source = "full" if resolved else "embedded"
    first = stream_for(cfg, data, cfg.seeds[0])  # a scenario that does not fit the dataset fails before anything is written
    for s in cfg.strategies:  # so does a strategy that cannot fit the stream (M²KD: too many steps for its pruning ratio)
        build_strategy(s.strategy_type, s.params, stream_info(first, resolved), cfg.seeds[0], cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out, cfg)
    atomic_write_json(out / "environment.json", {**environment(cfg.seeds, cfg.device),
                                                  "data_dir": str(resolved) if resolved else None})
    log = EventLog(out / "events.jsonl")
    log("run_start", config=cfg.name, seeds=cfg.seeds, data_dir=str(resolved) if resolved else None)
    cells: dict[str, dict[int, dict]] = {s.name: {} for s in cfg.strategies}
    expert_acc: dict[int, list[float]] = {}
    stream = None
    needs_experts = any("expert" in strategy_class(s.strategy_type).consumes for s in cfg.strategies)
    for seed in cfg.seeds:
        if needs_experts:
            stream, experts, root = experts_for(cfg, data, source, seed, cache_dir, progress=progress, log=log)
            expert_acc[seed] = [e.card.test_accuracy for e in experts]
            log("experts_ready", seed=seed, path=str(root), own_class_accuracy=expert_acc[seed])
        else:
            stream = stream_for(cfg, data, seed)
            experts = [None] * len(stream)
            log("experts_skipped", seed=seed, reason="no strategy of the run consumes experts")
        for s in cfg.strategies:
            path = out / "cells" / s.name / f"seed-{seed}.json"
            if path.exists():
                if (record := _finished_cell(path)) is not None:
                    cells[s.name][seed] = record
                    log("cell_skipped", strategy=s.name, seed=seed, reason="already finished")
                    continue
                log("cell_unreadable", strategy=s.name, seed=seed, path=str(path))
                if progress:
                    progress.log(f"warning: {path} is unreadable; computing the cell again")
            t0 = time.perf_counter()
            record = run_cell(cfg, s.name, stream, experts, seed, data_dir=resolved, progress=progress, log=log,
                              save_dir=out / "learners")
            atomic_write_json(path, record)
            cells[s.name][seed] = record
            log("cell_done", strategy=s.name, seed=seed, stream_accuracy=record["stream_accuracy"],
                seconds=round(time.perf_counter() - t0, 3))
            if progress:
                progress.log(f"  {s.name:<16} seed {seed}: stream accuracy {100 * record['stream_accuracy']:.2f}%")
    results = aggregate(cfg, stream, cells, expert_acc, source)
    from exmodel.reporting.write import write_reports
    write_reports(results, out)
    log("run_done", results=str(out / "results.json"))
    return results
