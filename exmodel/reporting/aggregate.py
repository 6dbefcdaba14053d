"""From finished (strategy, seed) cells to the ``results.json`` structure (mean ± std over seeds)."""

from __future__ import annotations

import math

import numpy as np

from exmodel.evaluation import mean_std

SCALARS = ("stream_accuracy", "task_aware_stream_accuracy", "task_agnostic_stream_accuracy", "average_accuracy", "forgetting", "backward_transfer",
           "wall_time_s", "macs_per_sample", "peak_memory_bytes", "peak_memory_increase_bytes", "state_bytes",
           "average_incremental_accuracy", "final_accuracy", "old_accuracy", "new_accuracy", "exemplar_bytes")
MATRICES = ("accuracy_matrix", "task_aware_accuracy_matrix", "task_agnostic_accuracy_matrix")


def json_safe(x):
    """NaN/inf become null (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _stat(values: list) -> dict | None:
    vals = [float("nan") if v is None else float(v) for v in values]
    if all(math.isnan(v) for v in vals):
        return None
    return mean_std(vals)  # a NaN among the seeds makes the mean NaN: a cell that failed is not hidden


def aggregate(cfg, stream, cells: dict[str, dict[int, dict]], expert_acc: dict[int, list[float]], source: str) -> dict:
    seeds = list(cfg.seeds)
    strategies = {}
    for name, by_seed in cells.items():
        recs = [by_seed[s] for s in seeds]
        entry: dict = {"type": recs[0]["type"], "ex_model": recs[0]["ex_model"],
                       "exemplar_free": recs[0]["exemplar_free"]}
        for key in SCALARS:
            entry[key] = _stat([r.get(key) for r in recs])
        for key in MATRICES:
            mats = np.array([[[np.nan if v is None else v for v in row] for row in r[key]] for r in recs], dtype=float)
            entry[key] = {"mean": np.nanmean(mats, axis=0) if not np.isnan(mats).all() else mats[0],
                          "per_seed": mats}
        curves = [r.get("accuracy_after_task") for r in recs]
        if all(c is not None for c in curves):  # accuracy on all classes seen so far, after each task
            arr = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=float)
            entry["accuracy_after_task"] = {"mean": arr.mean(axis=0), "per_seed": arr}
        entry["state_bytes_per_step"] = [r["state_bytes_per_step"] for r in recs]
        # the final model (task-aware in MT streams): per-class accuracy (mean over seeds), summed confusion matrices
        entry["per_class_accuracy"] = np.nanmean(np.array([r["per_class_accuracy"] for r in recs], dtype=float), axis=0)
        entry["confusion_matrix"] = np.sum([r["confusion_matrix"] for r in recs], axis=0)
        strategies[name] = entry
    per_seed_experts = [expert_acc[s] for s in seeds if s in expert_acc]  # none when no strategy used experts
    results = {
        "name": cfg.name,
        "scenario": f"{cfg.scenario.dataset}_{cfg.scenario.kind}",
        "scenario_kind": cfg.scenario.kind,
        "dataset": cfg.scenario.dataset,
        "data_source": source,
        "seeds": seeds,
        "num_experiences": len(stream) if stream is not None else 0,
        "experts": {"own_class_accuracy": _stat([float(np.mean(a)) for a in per_seed_experts]),
                    "min_own_class_accuracy": float(np.min(per_seed_experts)),
                    "per_seed": per_seed_experts} if per_seed_experts else None,
        "strategies": strategies,
        "reference": {k: v.model_dump() for k, v in cfg.reference.items()},
    }
    return json_safe(_to_lists(results))


def _to_lists(x):
    if isinstance(x, dict):
        return {k: _to_lists(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, list):
        return [_to_lists(v) for v in x]
    return x
