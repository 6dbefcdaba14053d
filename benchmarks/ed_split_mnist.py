"""Benchmark: Ex-Model Distillation on Split-MNIST NC (full data, 3 seeds).

    python benchmarks/ed_split_mnist.py --data-dir ../shared/data --out ed_split_mnist.json

Runs ``configs/ed_split_mnist.yaml`` (every ED strategy in its paper and default settings, plus the
baselines) and writes JSON shaped like ``results.json``: per strategy the stream accuracy
(mean/std/per seed), wall time, MACs per sample, peak memory and the bytes of state kept between
experts, with the machine it ran on. The run folder (``--run-dir``) is resumable.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: embedded subsets)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ed_split_mnist.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default=None,
                    help="comma-separated subset of the config's strategies (default: all of them)")
    ap.add_argument("--run-dir", default=None, help="run folder (default runs/bench-<config>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args(argv)

    from exmodel.config import load_config
    from exmodel.fileio import atomic_write_json
    from exmodel.progress import Progress
    from exmodel.reporting.records import environment
    from exmodel.runner import run_experiment

    cfg = load_config(args.config, args.overrides)
    cfg.seeds = [int(s) for s in args.seeds.split(",")]
    if args.strategies:
        wanted = [n.strip() for n in args.strategies.split(",") if n.strip()]
        known = {s.name for s in cfg.strategies}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            print(f"error: {', '.join(unknown)} not in {cfg.name}; available: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
        cfg.strategies = [s for s in cfg.strategies if s.name in wanted]
    suffix = "" if not args.strategies else "-" + "-".join(s.name for s in cfg.strategies)
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-{cfg.name}{suffix}")
    with Progress(enabled=sys.stderr.isatty()) as progress:
        results = run_experiment(cfg, run_dir, data_dir=args.data_dir, progress=progress)
    keep = ("ex_model", "stream_accuracy", "task_aware_stream_accuracy", "forgetting", "wall_time_s", "macs_per_sample",
            "peak_memory_bytes", "peak_memory_increase_bytes", "state_bytes", "state_bytes_per_step")
    out = {"benchmark": Path(__file__).stem, "config": cfg.name, "scenario": results["scenario"],
           "data_source": results["data_source"], "seeds": results["seeds"], "experts": results["experts"],
           "environment": environment(cfg.seeds, cfg.device), "run_dir": str(run_dir),
           "strategies": {n: {k: v.get(k) for k in keep} for n, v in results["strategies"].items()},
           "reference": results.get("reference", {})}
    atomic_write_json(args.out, out)
    for name, entry in out["strategies"].items():
        acc = entry["stream_accuracy"]
        print(f"{name:<18} stream accuracy {100 * acc['mean']:6.2f} ± {100 * acc['std']:5.2f}   "
              f"time {entry['wall_time_s']['mean']:7.1f} s   state {entry['state_bytes']['mean'] / 1e6:6.2f} MB")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
