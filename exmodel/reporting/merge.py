"""Reading finished runs and merging them for ``exmodel report RUN_DIR...``.

People run a benchmark in pieces: seeds 0-2 today, seeds 3-4 tomorrow, the slow baseline on another
machine. The report puts them back together:

* runs of the same scenario (and the same data source: a run on the small embedded data set is not
  another seed of a run on the full data) become one results structure whose strategies are the
  union of the runs' strategies. A strategy found in several runs gets its ``per_seed`` lists
  concatenated and its mean / sample std (ddof=1; 0.0 for a single seed) recomputed; each merged
  strategy records the seeds its values belong to under ``"seeds"``. A seed reported twice for the
  same strategy is an error, never silently averaged twice;
* different scenarios stay separate, side by side in one "stream accuracy" table with one column per
  scenario, like the MNIST Joint | NC | MT columns of Table 2 of the ex-model paper, followed by each
  scenario's full table (:func:`combined_markdown`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from exmodel.errors import ExmodelError
from exmodel.evaluation.metrics import mean_std
from exmodel.fileio import read_text
from exmodel.reporting.aggregate import MATRICES
from exmodel.reporting.tables import (
    MISSING,
    STAT_METRICS,
    format_stat,
    markdown_table,
    render_markdown,
)
from exmodel.text import SafeTable

RESULTS_FILE = "results.json"
MATRIX_KEYS: tuple[str, ...] = MATRICES
# Paper column order within a dataset: Joint | NC | NI | MT; unknown kinds go last.
KIND_ORDER = {"joint": 0, "nc": 1, "ni": 2, "mt": 3, "cil": 4}
KIND_LABELS = {"joint": "Joint", "nc": "NC", "ni": "NI", "mt": "MT", "cil": "CIL"}
CURVE_KEYS: tuple[str, ...] = ("accuracy_after_task",)  # one value per step and seed


# --------------------------------------------------------------------------------------- loading


def load_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``run_dir/results.json`` (``run_dir`` may also be the file itself) and check its shape."""
    path = Path(run_dir)
    if not path.is_file():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ExmodelError(f"{path}: not found; expected the {RESULTS_FILE} of a finished run")
    try:
        results = json.loads(read_text(path, "results file", ExmodelError))
    except json.JSONDecodeError as exc:
        raise ExmodelError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ExmodelError(f"{path}: JSON nested too deeply") from None
    validate_results(results, str(path))
    return results


def validate_results(results: Any, source: str = RESULTS_FILE) -> None:
    """Raise :class:`ExmodelError` naming the first key that does not have the expected shape."""
    if not isinstance(results, dict):
        raise ExmodelError(f"{source}: expected a JSON object at the top level, got {type(results).__name__}")
    if not isinstance(results.get("scenario"), str):
        raise ExmodelError(f"{source}: key 'scenario' must be a string")
    seeds = results.get("seeds")
    if not isinstance(seeds, list):
        raise ExmodelError(f"{source}: key 'seeds' must be a list of seeds")
    strategies = results.get("strategies")
    if not isinstance(strategies, dict):
        raise ExmodelError(f"{source}: key 'strategies' must be an object mapping strategy names to results")
    for name, entry in strategies.items():
        if not isinstance(entry, dict):
            raise ExmodelError(f"{source}: strategies.{name} must be an object")
        for metric in STAT_METRICS:
            stat = entry.get(metric)
            if stat is None:
                continue
            if not isinstance(stat, dict) or "mean" not in stat:
                raise ExmodelError(f"{source}: strategies.{name}.{metric} must be null or an object with 'mean'")
            per_seed = stat.get("per_seed")
            count = len(entry.get("seeds") or seeds)  # merged results record seeds per strategy
            if per_seed is not None and (not isinstance(per_seed, list) or len(per_seed) != count):
                raise ExmodelError(
                    f"{source}: strategies.{name}.{metric}.per_seed must be a list of {count} values "
                    f"(one per seed)"
                )


# ------------------------------------------------------------------------------------ statistics


def stat_from_values(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample std (ddof=1; 0.0 for one value) of the non-null, non-NaN values."""
    return mean_std(values, skip_missing=True)


def _matrix_array(matrix: Any, where: str) -> np.ndarray:
    # JSON has no NaN: the upper triangle (experiences not yet seen) is written as null.
    try:
        array = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    except (TypeError, ValueError):
        raise ExmodelError(f"{where}: expected a square matrix of numbers or nulls") from None
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ExmodelError(f"{where}: expected a square matrix, got shape {array.shape}")
    return array


def _mean_matrix(matrices: Sequence[np.ndarray]) -> list[list[float | None]]:
    stack = np.stack(matrices)
    counts = np.sum(~np.isnan(stack), axis=0)
    sums = np.nansum(stack, axis=0)
    mean = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    return [[None if math.isnan(v) else float(v) for v in row] for row in mean]


# --------------------------------------------------------------------------------------- merging


def _join_unique(values: Sequence[Any]) -> Any:
    unique = list(dict.fromkeys(v for v in values if v is not None))
    if len(unique) <= 1:
        return unique[0] if unique else None
    return " + ".join(str(v) for v in unique)


def _ordered_seeds(seeds: Sequence[Any]) -> list[Any]:
    unique = list(dict.fromkeys(seeds))
    return sorted(unique) if all(isinstance(s, int) for s in unique) else unique


def _combine_stat(where: str, parts: Sequence[tuple[list[Any], Any]]) -> dict[str, Any] | None:
    if all(stat is None for _, stat in parts):
        return None
    values: list[Any] = []
    for seeds, stat in parts:
        if stat is None:
            values += [None] * len(seeds)  # not measured for these seeds (e.g. an older run)
            continue
        per_seed = stat.get("per_seed")
        if not isinstance(per_seed, list) or len(per_seed) != len(seeds):
            raise ExmodelError(f"{where}: needs one per_seed value per seed ({len(seeds)}) to merge runs")
        values += per_seed
    try:
        return stat_from_values(values)
    except (TypeError, ValueError):
        raise ExmodelError(f"{where}: per_seed values must be numbers or null") from None


def _combine_matrix(where: str, size: int, parts: Sequence[tuple[list[Any], Any]]) -> dict[str, Any] | None:
    if all(not isinstance(m, Mapping) for _, m in parts):
        return None
    per_seed: list[Any] = []
    for seeds, matrix in parts:
        given = matrix.get("per_seed") if isinstance(matrix, Mapping) else None
        if given is None:
            per_seed += [None] * len(seeds)
            continue
        if len(given) != len(seeds):
            raise ExmodelError(f"{where}: needs one per_seed matrix per seed ({len(seeds)}) to merge runs")
        per_seed += given
    arrays = [_matrix_array(m, f"{where}.per_seed") for m in per_seed if m is not None]
    for array in arrays:
        if array.shape != (size, size):
            raise ExmodelError(f"{where}: expected {size}x{size} matrices, got {array.shape[0]}x{array.shape[1]}")
    return {"mean": _mean_matrix(arrays) if arrays else None, "per_seed": per_seed}


def _combine_curve(where: str, size: int, parts: Sequence[tuple[list[Any], Any]]) -> dict[str, Any] | None:
    """Per-step curves of every run, one per seed; a run without them leaves the curve out."""
    per_seed: list[list[float]] = []
    for seeds, block in parts:
        given = block.get("per_seed") if isinstance(block, Mapping) else None
        if not isinstance(given, list) or len(given) != len(seeds):
            return None
        for curve in given:
            if not isinstance(curve, list) or len(curve) != size:
                raise ExmodelError(f"{where}.per_seed: each curve needs {size} values, one per step")
            try:
                per_seed.append([float("nan") if v is None else float(v) for v in curve])
            except (TypeError, ValueError):
                raise ExmodelError(f"{where}.per_seed: values must be numbers or null") from None
    return {"mean": np.nanmean(np.array(per_seed), axis=0).tolist(), "per_seed": per_seed}


def _merge_strategy(where: str, size: int, parts: Sequence[tuple[list[Any], dict[str, Any]]]) -> dict[str, Any]:
    if len(parts) == 1:
        seeds, entry = parts[0]
        return {**copy.deepcopy(entry), "seeds": list(entry.get("seeds") or seeds)}
    all_seeds: list[Any] = []
    for seeds, _ in parts:
        for seed in seeds:
            if seed in all_seeds:
                raise ExmodelError(f"{where}: seed {seed} appears in more than one run; report each seed once")
            all_seeds.append(seed)
    flags = {bool(entry.get("ex_model")) for _, entry in parts}
    if len(flags) > 1:
        raise ExmodelError(f"{where}: runs disagree on whether this strategy is ex-model")
    merged: dict[str, Any] = {"ex_model": flags.pop(), "seeds": all_seeds}
    keys = list(dict.fromkeys(k for _, entry in parts for k in entry if k not in ("ex_model", "seeds")))
    for key in keys:
        values = [(seeds, entry.get(key)) for seeds, entry in parts]
        if key in MATRIX_KEYS:
            merged[key] = _combine_matrix(f"{where}.{key}", size, values)
        elif key in CURVE_KEYS:
            merged[key] = _combine_curve(f"{where}.{key}", size, values)
        elif key in STAT_METRICS or any(isinstance(v, Mapping) and "mean" in v for _, v in values):
            merged[key] = _combine_stat(f"{where}.{key}", values)
        else:  # a plain field (a note, a hyper-parameter): keep the first run's
            merged[key] = copy.deepcopy(next(v for _, v in values if v is not None))
    return merged


def _merge_experts(runs: Sequence[Mapping[str, Any]], seeds: list[Any]) -> dict[str, Any] | None:
    # Experts depend on the seed only, so two runs with the same seed (but different strategies)
    # share them: the first run's experts of each seed are kept.
    own: dict[Any, Any] = {}
    per_exp: dict[Any, Any] = {}
    for run in runs:
        experts = run.get("experts")
        if not isinstance(experts, Mapping):
            continue
        own_seeds = (experts.get("own_class_accuracy") or {}).get("per_seed") or []
        exp_seeds = experts.get("per_seed") or []
        for i, seed in enumerate(run.get("seeds") or []):
            if i < len(own_seeds):
                own.setdefault(seed, own_seeds[i])
            if i < len(exp_seeds):
                per_exp.setdefault(seed, exp_seeds[i])
    if not own and not per_exp:
        return None
    return {
        "own_class_accuracy": stat_from_values([own.get(s) for s in seeds]),
        "per_seed": [per_exp.get(s) for s in seeds],
    }


def _merge_group(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if len(runs) == 1:
        return copy.deepcopy(dict(runs[0]))
    scenario = runs[0]["scenario"]
    sizes = {run.get("num_experiences") for run in runs}
    if len(sizes) > 1:
        raise ExmodelError(f"scenario {scenario}: runs disagree on num_experiences ({sorted(map(str, sizes))})")
    size = int(sizes.pop() or 0)
    seeds = _ordered_seeds([s for run in runs for s in run.get("seeds") or []])
    merged: dict[str, Any] = {
        "name": _join_unique([run.get("name") for run in runs]),
        "scenario": scenario,
        "scenario_kind": runs[0].get("scenario_kind"),
        "dataset": _join_unique([run.get("dataset") for run in runs]),
        "data_source": runs[0].get("data_source"),
        "seeds": seeds,
        "num_experiences": size,
        "experts": _merge_experts(runs, seeds),
    }
    parts: dict[str, list[tuple[list[Any], dict[str, Any]]]] = {}
    for run in runs:
        for name, entry in run["strategies"].items():
            seeds_of_entry = list(entry.get("seeds") or run.get("seeds") or [])
            parts.setdefault(name, []).append((seeds_of_entry, entry))
    merged["strategies"] = {
        name: _merge_strategy(f"scenario {scenario}: strategy {name!r}", size, entries)
        for name, entries in parts.items()
    }
    reference: dict[str, Any] = {}
    for run in runs:
        for name, value in (run.get("reference") or {}).items():
            reference.setdefault(name, copy.deepcopy(value))
    if reference:
        merged["reference"] = reference
    return merged


def merge_results(results_list: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One merged results structure per (scenario, data source), in the paper's column order.

    Datasets keep the order in which they first appear; within a dataset the scenarios go
    Joint, NC, NI, MT. Runs are not modified.
    """
    groups: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for i, results in enumerate(results_list):
        validate_results(results, f"run #{i + 1}")
        groups.setdefault((results["scenario"], results.get("data_source")), []).append(results)
    merged = [_merge_group(runs) for runs in groups.values()]
    dataset_rank = {d: i for i, d in enumerate(dict.fromkeys(str(m.get("dataset")) for m in merged))}

    def column_order(m: Mapping[str, Any]) -> tuple[int, int]:
        return dataset_rank[str(m.get("dataset"))], KIND_ORDER.get(str(m.get("scenario_kind")), len(KIND_ORDER))

    return sorted(merged, key=column_order)


# ------------------------------------------------------------------------------ combined table


def column_labels(merged: Sequence[Mapping[str, Any]]) -> list[str]:
    """``"MNIST NC"`` per scenario; the scenario id (then also the data source) when that is ambiguous."""

    def short(m: Mapping[str, Any]) -> str:
        kind = str(m.get("scenario_kind"))
        return f"{str(m.get('dataset')).upper()} {KIND_LABELS.get(kind, kind)}"

    candidates = (short, lambda m: str(m["scenario"]), lambda m: f"{m['scenario']} ({m.get('data_source')})")
    for label in candidates:
        labels = [label(m) for m in merged]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def combined_cells(results_list: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Stream accuracy (%) of every strategy in every scenario; "–" where a strategy was not run."""
    return _combined_cells_of(merge_results(results_list))


def _combined_cells_of(merged: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Strategy", "Ex-model", *column_labels(merged)]
    names = list(dict.fromkeys(name for m in merged for name in m["strategies"]))
    rows = []
    for name in names:
        flag = next(m["strategies"][name].get("ex_model") for m in merged if name in m["strategies"])
        cells = [format_stat(m["strategies"][name].get("stream_accuracy")) if name in m["strategies"] else MISSING
                 for m in merged]
        rows.append([name, "✓" if flag else "✗", *cells])
    return header, rows


def combined_markdown(results_list: Sequence[Mapping[str, Any]]) -> str:
    """The one-column-per-scenario stream accuracy table, then each scenario's full table."""
    merged = merge_results(results_list)
    header, rows = _combined_cells_of(merged)
    sections = ["### Stream accuracy (%) per scenario", render_markdown(header, rows)]
    sections += [markdown_table(m).rstrip("\n") for m in merged]
    return "\n\n".join(sections) + "\n"


def combined_rich_table(results_list: Sequence[Mapping[str, Any]]) -> Table:
    """The one-column-per-scenario stream accuracy table, for the terminal."""
    header, rows = combined_cells(results_list)
    table = SafeTable(title="Stream accuracy (%) per scenario")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table
