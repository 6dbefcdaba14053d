"""Benchmark: wall-clock speedup of N SKILL agents on Ray over one, each agent held to one core.

    python benchmarks/skill_speedup.py --data-dir ../shared/data --out skill_speedup.json

Runs ``configs/skill_mini.yaml`` (no beneficial biases) on Ray with N = 1, then N = 2, ... (``--agents``),
every agent an actor with one CPU and one torch thread, each run with a fresh (cold) feature cache so
that every agent computes the features of its own tasks, as agents at different sites would. Records
per run the time to learn and share all tasks (from the moment every agent is built), start-up, the
MAC-based speedup and efficiency of SKILL Table 2, accuracy, and whether every agent answers the same;
then the measured speedup of each N over N = 1 and a projection to N = T from the per-task times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "skill_mini.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--agents", default="1,2")
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--warm-cache", default=None, help="use this feature cache instead of a cold one per run")
    args = ap.parse_args(argv)

    from exmodel.config import load_config
    from exmodel.skill.config import SkillConfig
    from exmodel.skill.protocol import run_skill

    runs = {}
    for n in [int(x) for x in args.agents.split(",")]:
        cfg = load_config(Path(args.config), args.set + [f"agents={n}", "backend=ray", "cpus_per_agent=1",
                                                         "threads_per_agent=1"], model=SkillConfig)
        work = Path(tempfile.mkdtemp(prefix=f"skill{n}-"))
        try:
            r = run_skill(cfg, work / "run", args.data_dir, args.warm_cache or work / "cache", log=print)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        learned = [e for e in r["events"] if e["kind"] == "learned"]
        runs[n] = {"seconds": r["seconds"], "costs": r["costs"], "identical": r["identical"],
                   "average": {m: v["average"] for m, v in r["accuracy"].items()},
                   "task_seconds": {e["name"]: e["seconds"] for e in learned}}
        print(f"N = {n}: learning and sharing {r['seconds']['learning_and_sharing']:.1f} s, start-up "
              f"{r['seconds']['startup']:.1f} s, MAC efficiency {r['costs']['efficiency']:.3f} N, "
              f"average {runs[n]['average']}", flush=True)
        Path(args.out).write_text(json.dumps({"runs": runs}, indent=1))
    base = runs.get(1)
    summary = {}
    if base:
        t1 = base["seconds"]["learning_and_sharing"]
        for n, r in runs.items():
            summary[n] = {"speedup": t1 / r["seconds"]["learning_and_sharing"],
                          "efficiency": t1 / r["seconds"]["learning_and_sharing"] / n}
        per_task = base["task_seconds"]
        summary["projection_n_equals_t"] = {"tasks": len(per_task), "single_agent_s": sum(per_task.values()),
                                            "longest_task_s": max(per_task.values()),
                                            "speedup_bound": sum(per_task.values()) / max(per_task.values())}
    Path(args.out).write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
