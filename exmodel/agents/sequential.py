"""One LLL agent learning a many-task benchmark in sequence, evaluated after every task (SKILL Sec. 6).

After task t the agent is tested on the test images of tasks 1..t *without a task label*: the mapper
picks a task, that task's head a class; an image counts as right when both are. Recorded per mapper:
the accuracy matrix ``acc[t][j]`` (after t + 1 tasks, on task j), the mapper's own accuracy matrix,
and, once per task, the head's accuracy with a perfect task oracle. The figures of the paper are
drawn from these (:mod:`exmodel.reporting.lll_plots`).

Work is saved as it is done: features in the feature cache, each task's bundle in ``RUN/tasks/``; a
rerun with the same ``--out`` loads them (the run folder must hold the same config) and learns only
what is missing. The confidence weight of the ``ours`` mapper is chosen first, on a validation split
(``validation_fraction`` of each class's training images held out; heads and anchors fitted on the
rest; the weight of best mapper accuracy over all tasks wins, the smaller one on ties).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from exmodel.agents.baselines import run_baselines
from exmodel.agents.config import LLLConfig
from exmodel.agents.features import Backbone, FeatureCache, bundle_backbone, lite0_backbone
from exmodel.agents.knowledge import TaskKnowledge, load_task, save_task
from exmodel.agents.lll import (BiasParams, HeadParams, LLLAgent, anchors_for, biased_features, learn_biases,
                                learn_task, maha_picks)
from exmodel.config import claim_run_folder
from exmodel.data.types import ImageDataset
from exmodel.fileio import atomic_write_json
from exmodel.progress import Progress

SHARED = {"gmmc": ("head", "biases", "gmmc"), "maha": ("head", "biases", "maha"), "ours": ("head", "biases", "maha")}


@dataclass
class TaskData:
    name: str
    source: str
    train: ImageDataset
    test: ImageDataset
    f_train: torch.Tensor
    f_test: torch.Tensor


def task_data(bench, backbone: Backbone, cache: FeatureCache, progress: Progress | None = None) -> list[TaskData]:
    """The backbone's features of every task of ``bench`` (SkillTasks), read from or written to ``cache``."""
    tasks = []
    bar = progress.add("features: task", len(bench)) if progress else None
    for b in bench:
        tasks.append(TaskData(b.name, b.source, b.splits.train, b.splits.test,
                              cache.features(backbone, b.splits.train, progress),
                              cache.features(backbone, b.splits.test, progress)))
        if bar is not None:
            progress.advance(bar)
    if bar is not None:
        progress.remove(bar)
    return tasks


def shared_rows(t: TaskData, m: int, seed: int) -> torch.Tensor:
    """The training features of the m images per class task ``t`` shares for MAHA (:func:`maha_picks`)."""
    return t.f_train[maha_picks(t.train.labels, len(t.train.class_names), m, seed)]


def agent_from_run(cfg: LLLConfig, out: str | Path, tasks: list[TaskData], backbone: Backbone, mapper: str,
                   confidence: float = 0.0) -> LLLAgent:
    """An agent holding every task a finished run saved under ``out/tasks`` (validated on load)."""
    agent = LLLAgent(backbone, mapper, confidence)
    for i, t in enumerate(tasks):
        k = load_task(Path(out) / "tasks" / f"{i + 1:02d}_{t.name}.safetensors", backbone.cache_id)
        shared = shared_rows(t, cfg.maha_m, cfg.seed) if k.maha_means is not None else None
        agent.receive(k, shared)
    return agent


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, held-out rows): ``fraction`` of each class held out (at least one when it has two)."""
    g = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:n])
        fit.append(idx[n:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def _params(cfg: LLLConfig) -> HeadParams:
    return HeadParams(cfg.head.weight_decay, cfg.head.iterations, cfg.gmmc_k, cfg.maha_m)


def evaluate(agent: LLLAgent, mapper: str, tasks: list[TaskData], rows: list[torch.Tensor] | None = None,
             confidences: list[float] | None = None, bb_correct: list[torch.Tensor] | None = None
             ) -> list[tuple[list[float], ...]]:
    """Per task: (accuracy without a task label, mapper accuracy) on its test features (or ``rows`` of
    the training ones), for the agent's confidence weight or each of ``confidences``; with
    ``bb_correct`` (per task, whether its head with beneficial biases is right on each test image) a
    third list: the accuracy with beneficial biases (mapped right and right with the task's biases)."""
    xs = [t.f_test if rows is None else t.f_train[rows[j]] for j, t in enumerate(tasks)]
    ys = [t.test.labels if rows is None else t.train.labels[rows[j]] for j, t in enumerate(tasks)]
    anchors, conf = agent.score_parts(torch.cat(xs), mapper)
    weights = confidences or [agent.confidence]
    out = []
    for c in weights:
        task = (anchors if conf is None or not c else anchors + c * conf).argmax(1)
        acc, mapped, acc_bb, start = [], [], [], 0
        for j, (x, y) in enumerate(zip(xs, ys)):
            t = task[start:start + len(x)]
            start += len(x)
            right = t == j
            mapped.append(float(right.float().mean()))
            acc.append(float((right & (agent.classify(x, t) == y)).float().mean()))
            if bb_correct is not None:
                acc_bb.append(float((right & bb_correct[j]).float().mean()))
        out.append((acc, mapped, acc_bb) if bb_correct is not None else (acc, mapped))
    return out


def head_accuracy(k: TaskKnowledge, t: TaskData) -> float:
    return float(((t.f_test @ k.head_weight.T + k.head_bias).argmax(1) == t.test.labels).float().mean())


def choose_confidence(cfg: LLLConfig, tasks: list[TaskData], backbone: Backbone,
                      progress: Progress | None = None) -> tuple[float, dict[str, float]]:
    """The ``ours`` confidence weight of best validation mapper accuracy (mean over tasks)."""
    splits = [validation_split(t.train.labels, cfg.validation_fraction, cfg.seed + 1) for t in tasks]
    agent = LLLAgent(backbone, "ours")
    bar = progress.add("validation: the confidence weight of 'ours'", len(tasks)) if progress else None
    for t, (fit, _) in zip(tasks, splits):
        data = t.train.subset(fit)
        k = learn_task(t.name, data, t.f_train[fit], backbone, _params(cfg), cfg.seed, anchors=("maha",))
        shared = t.f_train[fit][maha_picks(data.labels, data.num_classes, cfg.maha_m, cfg.seed)]
        agent.receive(k, shared)
        if bar is not None:
            progress.advance(bar)
    if bar is not None:
        progress.remove(bar)
    scores = evaluate(agent, "ours", tasks, [h for _, h in splits], cfg.confidence_grid)
    table = {str(c): sum(mapped) / len(tasks) for c, (_, mapped) in zip(cfg.confidence_grid, scores)}
    best = max(cfg.confidence_grid, key=lambda c: (table[str(c)], -c))
    return best, table


def counted(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), its multiply-accumulates)``, counted by PyTorch's FLOP counter (matmuls and
    convolutions, forward and backward, 2 FLOPs per MAC); NumPy work (scikit-learn) is not seen."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops()) // 2


def _learn(cfg: LLLConfig, t: TaskData, backbone: Backbone, per_image: int) -> TaskKnowledge:
    """The task's plain bundle, with what learning it cost in its ``info["macs"]``: the backbone's
    forward pass over its training images (counted on one), the head's L-BFGS and the GMM fit (formulas)."""
    k = learn_task(t.name, t.train, t.f_train, backbone, _params(cfg), cfg.seed, anchors_for(cfg.mappers))
    k.info["macs"] = {"features": per_image * len(t.train), "head": k.info["macs"]["head"],
                      "gmmc": k.gmmc.fit_macs if k.gmmc is not None else 0}
    return k


def _with_biases(cfg: LLLConfig, k: TaskKnowledge, t: TaskData, backbone: Backbone, path: Path,
                 progress: Progress | None) -> TaskKnowledge | None:
    """The task's bundle with beneficial biases (learned and saved to ``path``), None if already saved."""
    if path.is_file():
        return None
    (state, w, b), macs = counted(learn_biases, t.train, backbone, (k.head_weight, k.head_bias),
                                  BiasParams(cfg.bb.epochs, cfg.bb.lr, cfg.bb.batch_size, cfg.bb.head_lr, cfg.bb.refit_head),
                                  cfg.seed, progress, _params(cfg))
    kb = dataclasses.replace(k, head_weight=w, head_bias=b, biases=state,
                             info={**k.info, "bb_epochs": cfg.bb.epochs, "macs": {**k.info["macs"], "bb": macs}})
    save_task(kb, path)
    return kb


def maha_receiver_macs(shared_per_task: list[int], d: int) -> int:
    """MACs of the receiver's MAHA covariance, recomputed after every task: a thin SVD of the M x d
    centred shared samples, ~M d min(M, d), for the M samples held after each task."""
    total, m = 0, 0
    for n in shared_per_task:
        m += n
        total += m * d * min(m, d)
    return total


def training_macs(task_macs: list[dict[str, int]], cfg: LLLConfig, d: int, classes: list[int]) -> dict[str, int]:
    """Training MACs of one agent learning every task, per variant (SKILL Table 1)."""
    base = sum(t.get("features", 0) + t.get("head", 0) for t in task_macs)
    gmmc = sum(t.get("gmmc", 0) for t in task_macs)
    maha = maha_receiver_macs([c * cfg.maha_m for c in classes], d)
    bb = sum(t.get("bb", 0) for t in task_macs)
    out = {}
    for m in cfg.mappers:
        out[m] = base + (gmmc if m == "gmmc" else maha)
        if cfg.bb.enabled:
            out[f"{m} + BB"] = out[m] + bb
    return out


def run_lll(cfg: LLLConfig, out: str | Path, data_dir: str | Path | None = None,
            cache_dir: str | Path | None = None, progress: Progress | None = None,
            backbone: Backbone | None = None) -> dict:
    """Learn every task of the benchmark in order, evaluate after each, write ``RUN/results.json``."""
    from exmodel.data.skill_mini import build_skill_mini, manifest

    clock = {"start": time.perf_counter()}
    bench = build_skill_mini(data_dir, cfg.benchmark.size, cfg.benchmark.seed)  # bad data: nothing written yet
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_folder(out, cfg)
    atomic_write_json(out / "benchmark.json", manifest(bench, cfg.benchmark.size, cfg.benchmark.seed))
    if backbone is None:
        backbone = bundle_backbone(cfg.backbone.bundle) if cfg.backbone.name == "bundle" \
            else lite0_backbone(cfg.backbone.side, cfg.backbone.weights)
    cache = FeatureCache(Path(cache_dir) / "features" if cache_dir else None)
    t0 = time.perf_counter()
    tasks = task_data(bench, backbone, cache, progress)
    clock["features"] = time.perf_counter() - t0

    confidence, validation = (cfg.confidence, {}) if cfg.confidence != "auto" else (None, None)
    t0 = time.perf_counter()
    if "ours" in cfg.mappers and cfg.confidence == "auto":
        confidence, validation = choose_confidence(cfg, tasks, backbone, progress)
    clock["validation"] = time.perf_counter() - t0

    agents = {m: LLLAgent(backbone, m, confidence if m == "ours" else 0.0) for m in cfg.mappers}
    acc = {m: [] for m in cfg.mappers}
    mapped = {m: [] for m in cfg.mappers}
    acc_bb = {m: [] for m in cfg.mappers}
    oracle, nbytes, learned = [], {m: [] for m in cfg.mappers}, 0
    oracle_bb, bb_correct, nbytes_bb = [], [], {m: [] for m in cfg.mappers}
    with torch.no_grad():
        _, per_image = counted(backbone.model.forward_features, backbone.prepare(tasks[0].train.images[:1]))
    task_macs: list[dict[str, int]] = []
    clock["learn"] = clock["evaluate"] = 0.0
    bar = progress.add("learning tasks", len(tasks)) if progress else None
    for i, t in enumerate(tasks):
        t0 = time.perf_counter()
        path = out / "tasks" / f"{i + 1:02d}_{t.name}.safetensors"
        if path.is_file():
            k = load_task(path, backbone.cache_id)
        else:
            k = _learn(cfg, t, backbone, per_image)
            save_task(k, path)
            learned += 1
        task_macs.append(dict(k.info.get("macs", {})))
        shared = shared_rows(t, cfg.maha_m, cfg.seed) if k.maha_means is not None else None
        for agent in agents.values():
            agent.receive(k, shared)
        oracle.append(head_accuracy(k, t))
        if cfg.bb.enabled:
            kb = _with_biases(cfg, k, t, backbone, out / "tasks_bb" / path.name, progress)
            kb = kb or load_task(out / "tasks_bb" / path.name, backbone.cache_id)
            task_macs[-1]["bb"] = kb.info.get("macs", {}).get("bb", 0)
            f = biased_features(t.test.images, backbone, kb.biases)
            bb_correct.append((f @ kb.head_weight.T + kb.head_bias).argmax(1) == t.test.labels)
            oracle_bb.append(float(bb_correct[-1].float().mean()))
        clock["learn"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for m, agent in agents.items():
            (a, p, *bb), = evaluate(agent, m, tasks[:i + 1], bb_correct=bb_correct if cfg.bb.enabled else None)
            acc[m].append(a)
            mapped[m].append(p)
            nbytes[m].append(k.nbytes(SHARED[m]))
            if cfg.bb.enabled:
                acc_bb[m].append(bb[0])
                nbytes_bb[m].append(kb.nbytes(SHARED[m]))
        clock["evaluate"] += time.perf_counter() - t0
        if bar is not None:
            progress.advance(bar)
    if bar is not None:
        progress.remove(bar)
    t0 = time.perf_counter()
    baselines = run_baselines(cfg.baselines, bench, backbone, cache, out / "baselines", cfg.seed, progress)
    clock["baselines"] = time.perf_counter() - t0
    clock["total"] = time.perf_counter() - clock.pop("start")
    results = {
        "name": cfg.name, "config": cfg.model_dump(mode="json"), "backbone": backbone.cache_id,
        "tasks": [{"name": t.name, "source": t.source, "classes": list(t.train.class_names),
                   "train": len(t.train), "test": len(t.test)} for t in tasks],
        "oracle": oracle,
        "mappers": {m: {"confidence": confidence if m == "ours" else None, "acc": acc[m], "mapper_acc": mapped[m],
                        "average": [sum(r) / len(r) for r in acc[m]],
                        "mapper_average": [sum(r) / len(r) for r in mapped[m]],
                        "bytes_per_task": nbytes[m]} for m in cfg.mappers},
        "validation": validation,
        "bb": None if not cfg.bb.enabled else {
            "oracle": oracle_bb,
            "mappers": {m: {"acc": acc_bb[m], "average": [sum(r) / len(r) for r in acc_bb[m]],
                            "bytes_per_task": nbytes_bb[m]} for m in cfg.mappers}},
        "macs": {"features_per_image": per_image, "per_task": task_macs,
                 "receiver_covariance": maha_receiver_macs([len(t.train.class_names) * cfg.maha_m for t in tasks],
                                                           backbone.num_features),
                 "variants": training_macs(task_macs, cfg, backbone.num_features, [len(t.train.class_names) for t in tasks])},
        "baselines": baselines or None,
        "seconds": clock, "tasks_learned_now": learned,
        "feature_cache": {"hits": cache.hits, "misses": cache.misses},
    }
    atomic_write_json(out / "results.json", results)
    return results
