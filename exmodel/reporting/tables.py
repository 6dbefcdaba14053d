"""Tables of a finished run: the shape of Table 2 of the ex-model continual learning paper.

A run writes ``results.json`` (one stat ``{"mean", "std", "per_seed"}`` per strategy and metric,
accuracies as fractions). This module turns it into what people read: a markdown table for reports,
a ``rich`` table for the terminal and a long-format CSV (one row per strategy, seed and metric) for
anyone who wants to redo the statistics. Markdown and rich show the same cells, built once by
:func:`table_cells`. Any stat can be missing or null (task-aware accuracy has no meaning for a
class-incremental strategy that never sees task labels); such cells show "–".
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from exmodel.fileio import atomic_write_text
from exmodel.text import SafeTable

MISSING = "–"  # en dash, shown wherever a value does not apply or was not measured

# Metrics that are stats (mean/std/per_seed) in each strategy entry, in CSV order.
STAT_METRICS: tuple[str, ...] = (
    "stream_accuracy",
    "task_aware_stream_accuracy",
    "average_accuracy",
    "forgetting",
    "backward_transfer",
    "wall_time_s",
    "macs_per_sample",
    "peak_memory_bytes",
    "state_bytes",
    "average_incremental_accuracy",
    "final_accuracy",
    "old_accuracy",
    "new_accuracy",
    "exemplar_bytes",
)

CSV_COLUMNS: tuple[str, ...] = ("strategy", "ex_model", "seed", "metric", "value")


def stat_mean(stat: Any) -> float | None:
    """The mean of a stat dict (or a bare number); None when missing, null or NaN."""
    if isinstance(stat, Mapping):
        stat = stat.get("mean")
    if stat is None or isinstance(stat, bool) or not isinstance(stat, numbers.Real):
        return None
    value = float(stat)
    return None if math.isnan(value) else value


def format_stat(stat: Any, percent: bool = True, digits: int = 2) -> str:
    """``{"mean": 0.4323, "std": 0.03}`` -> ``"43.23 ± 3.00"``; "–" when the mean is missing.

    A stat without a usable std (missing, null, NaN) or from a single seed shows the mean alone.
    """
    mean = stat_mean(stat)
    if mean is None:
        return MISSING
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.{digits}f}"
    std = stat_mean(stat.get("std")) if isinstance(stat, Mapping) else None
    single = isinstance(stat, Mapping) and isinstance(stat.get("per_seed"), list) and len(stat["per_seed"]) == 1
    if std is not None and not single:
        text += f" ± {std * scale:.{digits}f}"
    return text


def format_bytes(stat: Any) -> str:
    """A byte count in decimal (SI) units with one decimal: 1_234_567 -> ``"1.2 MB"``."""
    value = stat_mean(stat)
    if value is None:
        return MISSING
    if abs(value) < 1000:
        return f"{value:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000.0
        if abs(value) < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def format_macs(stat: Any) -> str:
    """Multiply-accumulates per sample, in millions (``"0.42 M"``), or billions from 1e9 on."""
    value = stat_mean(stat)
    if value is None:
        return MISSING
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f} G"
    return f"{value / 1e6:.2f} M"


def format_seconds(stat: Any) -> str:
    """Wall time in seconds with one decimal: ``"12.3"``."""
    value = stat_mean(stat)
    return MISSING if value is None else f"{value:.1f}"


def has_reference(results: Mapping[str, Any]) -> bool:
    """True when the run carries published numbers to compare against."""
    return bool(results.get("reference"))


def title_line(results: Mapping[str, Any]) -> str:
    """``split_mnist — scenario split_mnist_nc (nc), dataset mnist (full data), seeds 0, 1, 2``."""
    seeds = ", ".join(str(s) for s in results.get("seeds") or []) or MISSING
    return (
        f"{results.get('name', MISSING)} — scenario {results.get('scenario', MISSING)} "
        f"({results.get('scenario_kind', MISSING)}), dataset {results.get('dataset', MISSING)} "
        f"({results.get('data_source', MISSING)} data), seeds {seeds}"
    )


def experts_line(results: Mapping[str, Any]) -> str:
    """``Experts' accuracy on their own classes: 99.12 ± 0.10``."""
    experts = results.get("experts")
    if not experts:
        return "No experts: no strategy of the run consumes them"
    return f"Experts' accuracy on their own classes: {format_stat(experts.get('own_class_accuracy'))}"


def _flag(value: Any) -> str:
    return "–" if value is None else "✓" if value else "✗"


def table_cells(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one row of display strings per strategy, in the order of ``results["strategies"]``."""
    if results.get("scenario_kind") == "cil":
        return _cil_cells(results)
    with_paper = has_reference(results)
    header = ["Strategy", "Ex-model", "Exemplar-free", "Stream acc. (%)", "Task-aware (%)", "Avg. acc. (%)", "Forgetting (%)"]
    if with_paper:
        header.append("Paper (%)")
    header += ["Time (s)", "MACs/sample", "Peak mem. +", "State kept"]
    references = results.get("reference") or {}
    rows: list[list[str]] = []
    for name, entry in (results.get("strategies") or {}).items():
        row = [
            str(name),
            "✓" if entry.get("ex_model") else "✗",
            _flag(entry.get("exemplar_free")),
            format_stat(entry.get("stream_accuracy")),
            format_stat(entry.get("task_aware_stream_accuracy")),
            format_stat(entry.get("average_accuracy")),
            format_stat(entry.get("forgetting")),
        ]
        if with_paper:
            row.append(format_stat(references.get(name)))
        row += [
            format_seconds(entry.get("wall_time_s")),
            format_macs(entry.get("macs_per_sample")),
            format_bytes(entry.get("peak_memory_increase_bytes")),
            format_bytes(entry.get("state_bytes")),
        ]
        rows.append(row)
    return header, rows


def _cil_cells(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Class-incremental runs: the numbers of iCaRL's and SKD's tables, and what each strategy keeps."""
    with_paper = has_reference(results)
    header = ["Strategy", "Exemplar-free", "Avg. incr. acc. (%)", "Final acc. (%)", "Old (%)", "New (%)",
              "Forgetting (%)"]
    if with_paper:
        header.append("Paper (%)")
    header += ["Time (s)", "Exemplars kept", "State kept"]
    references = results.get("reference") or {}
    rows: list[list[str]] = []
    for name, entry in (results.get("strategies") or {}).items():
        row = [str(name), _flag(entry.get("exemplar_free"))]
        row += [format_stat(entry.get(k)) for k in ("average_incremental_accuracy", "final_accuracy", "old_accuracy",
                                                    "new_accuracy", "forgetting")]
        if with_paper:
            row.append(format_stat(references.get(name)))
        row += [format_seconds(entry.get("wall_time_s")), format_bytes(entry.get("exemplar_bytes")),
                format_bytes(entry.get("state_bytes"))]
        rows.append(row)
    return header, rows


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; "|" inside cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    separator = "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def markdown_table(results: Mapping[str, Any]) -> str:
    """Title line, experts' line and the per-strategy table, as markdown."""
    header, rows = table_cells(results)
    return "\n\n".join([f"### {title_line(results)}", experts_line(results), render_markdown(header, rows)]) + "\n"


TERMINAL_DROPS = ("Exemplar-free", "Avg. acc. (%)", "MACs/sample", "Peak mem. +", "Old (%)", "New (%)")  # kept in table.md; dropped to fit an 80-column terminal


def rich_table(results: Mapping[str, Any], compact: bool = False) -> Table:
    """The same content as :func:`markdown_table`, for printing with ``rich`` (``compact``: fewer columns)."""
    header, rows = table_cells(results)
    keep = [i for i, h in enumerate(header) if not (compact and h in TERMINAL_DROPS)]
    table = SafeTable(title=title_line(results), caption=experts_line(results))
    for i in keep:
        table.add_column(header[i], justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def _seeds_of(results: Mapping[str, Any], entry: Mapping[str, Any]) -> list[Any]:
    # A merged run (see merge.py) records the seeds of each strategy; a single run shares one list.
    return list(entry.get("seeds") or results.get("seeds") or [])


def csv_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long format: one row per (strategy, seed, metric) with a measured value.

    Values are the raw ``per_seed`` numbers (fractions for accuracies, seconds, bytes, MACs);
    null per-seed values and stats without ``per_seed`` produce no row.
    """
    rows: list[dict[str, Any]] = []
    for name, entry in (results.get("strategies") or {}).items():
        seeds = _seeds_of(results, entry)
        for metric in STAT_METRICS:
            stat = entry.get(metric)
            if not isinstance(stat, Mapping):
                continue
            for i, value in enumerate(stat.get("per_seed") or []):
                if value is None:
                    continue
                seed = seeds[i] if i < len(seeds) else None
                rows.append(
                    {"strategy": name, "ex_model": bool(entry.get("ex_model")), "seed": seed,
                     "metric": metric, "value": float(value)}
                )
    return rows


def write_csv(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write :func:`csv_rows` atomically; booleans as ``true``/``false``, floats at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in csv_rows(results):
        writer.writerow(
            [row["strategy"], "true" if row["ex_model"] else "false",
             "" if row["seed"] is None else row["seed"], row["metric"], repr(row["value"])]
        )
    return atomic_write_text(path, buffer.getvalue())
