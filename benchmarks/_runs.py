"""What the run-a-config benchmarks share: the command line, the strategy subset, the run itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str, default_config: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: embedded subsets)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--config", default=str(ROOT / "configs" / default_config))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default=None,
                    help="comma-separated subset of the config's strategies (default: all of them)")
    ap.add_argument("--run-dir", default=None, help="run folder (default runs/bench-<config>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    return ap


def run(args: argparse.Namespace):
    """``(cfg, results, run_dir)``, or ``None`` after one error line (a bad config, an unknown strategy,
    a run folder of another config)."""
    from exmodel.config import load_config
    from exmodel.errors import ExmodelError

    try:
        return _run(args, load_config(args.config, args.overrides))
    except ExmodelError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace, cfg):
    from exmodel.progress import Progress
    from exmodel.runner import run_experiment

    cfg.seeds = [int(s) for s in args.seeds.split(",")]
    if args.strategies:
        wanted = [n.strip() for n in args.strategies.split(",") if n.strip()]
        known = {s.name for s in cfg.strategies}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            print(f"error: {', '.join(unknown)} not in {cfg.name}; available: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return None
        cfg.strategies = [s for s in cfg.strategies if s.name in wanted]
    suffix = "" if not args.strategies else "-" + "-".join(s.name for s in cfg.strategies)
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-{cfg.name}{suffix}")
    with Progress(enabled=sys.stderr.isatty()) as progress:
        results = run_experiment(cfg, run_dir, data_dir=args.data_dir, progress=progress)
    return cfg, results, run_dir


def summary(benchmark: str, cfg, results: dict, run_dir: Path, keep: tuple[str, ...]) -> dict:
    from exmodel.reporting.records import environment

    return {"benchmark": benchmark, "config": cfg.name, "scenario": results["scenario"],
            "data_source": results["data_source"], "seeds": results["seeds"], "experts": results["experts"],
            "environment": environment(cfg.seeds, cfg.device), "run_dir": str(run_dir),
            "strategies": {n: {k: v.get(k) for k in keep} for n, v in results["strategies"].items()},
            "reference": results.get("reference", {})}
