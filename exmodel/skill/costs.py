"""SKILL Table 2: what learning all tasks costs one agent and N agents, in MACs.

* teacher MACs — learning a task from its images: the backbone's forward pass over them, the head's
  L-BFGS and the GMM fit (counted per task by the agent that learned it);
* communication — the bytes each agent received, times ``alpha`` MACs per byte (the paper's 1,000);
* student MACs — what receiving costs: the features of the MAHA images a bundle carries and the tied
  covariance recomputed over all shared samples (0 for GMMC);
* a single agent pays every teacher's MACs and nothing else; with N agents the run lasts as long as
  its busiest agent, so the parallel total is the largest of each agent's teacher + communication +
  student MACs. Speedup = single total / parallel total; efficiency = speedup / N (1.0 is perfect).
  The paper's own accounting (teachers' MACs divided by N, plus one student's) is given beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def table2(results: Mapping[str, Any], alpha: float) -> dict:
    learned = [e for e in results["events"] if e["kind"] == "learned"]
    n = int(results["agents"])
    teacher = sum(e["macs"] for e in learned)
    per_agent = {}
    for a, s in results["per_agent"].items():
        own = sum(e["macs"] for e in learned if str(e["agent"]) == a)
        comm = s["bytes_received"] * alpha
        per_agent[a] = {"teacher_macs": own, "communication_bytes": s["bytes_received"],
                        "communication_macs": comm, "student_macs": s["student_macs"],
                        "total_macs": own + comm + s["student_macs"]}
    parallel = max((v["total_macs"] for v in per_agent.values()), default=0.0)
    busiest = max(per_agent.values(), key=lambda v: v["total_macs"], default=None)
    paper = teacher / n + (busiest["communication_macs"] + busiest["student_macs"] if busiest else 0.0)
    bytes_per_task = [e["bytes"] for e in learned]
    return {
        "alpha": alpha, "agents": n, "tasks": len(learned), "single_agent_macs": teacher,
        "parallel_macs": parallel, "per_agent": per_agent,
        "speedup": teacher / parallel if parallel else None,
        "efficiency": teacher / parallel / n if parallel else None,
        "paper_parallel_macs": paper, "paper_efficiency": teacher / paper / n if paper else None,
        "bytes_per_task": {"mean": sum(bytes_per_task) / len(bytes_per_task) if bytes_per_task else 0,
                           "min": min(bytes_per_task, default=0), "max": max(bytes_per_task, default=0)},
    }


def table2_markdown(costs: Mapping[str, Any]) -> str:
    lines = [f"SKILL Table 2 analog: {costs['tasks']} tasks, {costs['agents']} agents, α = {costs['alpha']:g} MACs per byte",
             "", "| agent | teacher MACs | received (bytes) | communication MACs | student MACs | total MACs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for a, v in costs["per_agent"].items():
        lines.append(f"| {a} | {v['teacher_macs']:.3g} | {v['communication_bytes']:,} | {v['communication_macs']:.3g} | "
                     f"{v['student_macs']:.3g} | {v['total_macs']:.3g} |")
    eff = costs["efficiency"]
    lines += ["", f"single agent {costs['single_agent_macs']:.3g} MACs; parallel (busiest agent) "
              f"{costs['parallel_macs']:.3g}; speedup {costs['speedup'] or 0:.2f}, efficiency "
              f"{eff if eff is not None else float('nan'):.3f} N (the paper's accounting: "
              f"{costs['paper_efficiency'] or 0:.3f} N); bytes per task {costs['bytes_per_task']['mean'] / 1e3:.1f} kB "
              f"(paper: 813 kB GMMC, 1.74 MB MAHA)"]
    return "\n".join(lines) + "\n"


def corrective_markdown(accuracy: Mapping[str, Any]) -> str:
    """SKILL Sec. 7.1: each mapper's average accuracy, strict and counting similar class names as right."""
    rows = {m: r for m, r in accuracy.items() if r.get("corrective")}
    if not rows:
        return ""
    thresholds = list(next(iter(rows.values()))["corrective"])
    lines = ["", "## Similar class names count as right (SKILL Sec. 7.1)", "",
             "| mapper | strict | " + " | ".join(f"name similarity ≥ {t}" for t in thresholds) + " |",
             "|---|---:|" + "---:|" * len(thresholds)]
    for m, r in rows.items():
        lines.append(f"| {m} | {100 * r['average']:.2f} | "
                     + " | ".join(f"{100 * r['corrective'][t]:.2f}" for t in thresholds) + " |")
    return "\n".join(lines) + "\n"
