"""The summary table of an LLL run: per mapper, accuracy without a task label and bytes shared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADERS = ("mapper", "average accuracy, all tasks (%)", "task mapper (%)", "task 1 at the end (%)",
           "bytes shared per task")


def lll_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for m, r in results["mappers"].items():
        name = f"{m} (confidence {r['confidence']:g})" if r.get("confidence") else m
        per_task = r["bytes_per_task"]
        rows.append([name, f"{r['average'][-1] * 100:.2f}", f"{r['mapper_average'][-1] * 100:.2f}",
                     f"{r['acc'][-1][0] * 100:.2f}", f"{sum(per_task) / len(per_task) / 1e3:.1f} kB"])
    oracle = results["oracle"]
    rows.append(["heads with a task oracle", f"{sum(oracle) / len(oracle) * 100:.2f}", "100", f"{oracle[0] * 100:.2f}", "—"])
    bb = results.get("bb")
    if bb:
        for m, r in bb["mappers"].items():
            conf = results["mappers"][m].get("confidence")
            name = f"{m} (confidence {conf:g}) + BB" if conf else f"{m} + BB"
            per_task = r["bytes_per_task"]
            rows.append([name, f"{r['average'][-1] * 100:.2f}", f"{results['mappers'][m]['mapper_average'][-1] * 100:.2f}",
                         f"{r['acc'][-1][0] * 100:.2f}", f"{sum(per_task) / len(per_task) / 1e3:.1f} kB"])
        o = bb["oracle"]
        rows.append(["heads + BB with a task oracle", f"{sum(o) / len(o) * 100:.2f}", "100", f"{o[0] * 100:.2f}", "—"])
    return rows


def macs_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """SKILL Table 1: training MACs of each variant for all tasks, relative to the cheapest, and its
    final average accuracy without a task label."""
    variants = (results.get("macs") or {}).get("variants") or {}
    baselines = (results.get("baselines") or {}).get("runs") or {}
    if not variants:
        return []
    cheapest = min(variants.values())
    rows = []
    for name, macs in variants.items():
        mapper, _, bb = name.partition(" + ")
        block = results["bb"]["mappers"][mapper] if bb else results["mappers"][mapper]
        rows.append([f"LLL, {'BB' if bb else 'no BB'}, {mapper}", f"{macs:.3g}", f"{macs / cheapest:.1f}x",
                     f"{block['average'][-1] * 100:.2f}"])
    for name, r in baselines.items():
        macs = r["macs"]["total"]
        rows.append([f"{name} (task oracle)", f"{macs:.3g}", f"{macs / cheapest:.1f}x", f"{r['average'][-1] * 100:.2f}"])
    return rows


def lll_markdown(results: Mapping[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in lll_rows(results)]
    macs = macs_rows(results)
    if macs:
        lines += ["", "| variant | training MACs | relative | average accuracy (%) |", "| --- | ---: | ---: | ---: |"]
        lines += ["| " + " | ".join(row) + " |" for row in macs]
    tasks = results["tasks"]
    secs = results["seconds"]
    lines += ["", f"{len(tasks)} tasks, {sum(len(t['classes']) for t in tasks)} classes; backbone {results['backbone']}; "
              f"{secs['total']:.0f} s ({secs['features']:.0f} s features, cache {results['feature_cache']['hits']} hits / "
              f"{results['feature_cache']['misses']} misses)"]
    return "\n".join(lines) + "\n"
