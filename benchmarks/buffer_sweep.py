"""Benchmark and figure: stream accuracy against the ED buffer size (the paper's Fig. 3, left).

    python benchmarks/buffer_sweep.py --data-dir ../shared/data --out sweep.json --plot sweep.png

The paper sweeps CIFAR10-MT, which is not on this machine; we sweep Split-MNIST NC (the config's
stream) with the same sizes, 10 (one image per class) to 5,000. Every (strategy, size) pair runs as
one strategy of a single run (named ``<strategy>-N<size>``, ``buffer_size`` set, everything else the
strategy's preset plus ``--params``), so experts are trained once and the run folder resumes.
Writes JSON ``{"sizes", "strategies": {name: {"ex_model", "stream_accuracy": {"mean", "std",
"per_seed"}, "wall_time_s"}}}`` (one list entry per size) and the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: embedded subsets)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--plot", default=None, help="PNG to write (default: next to --out)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ed_split_mnist.yaml"))
    ap.add_argument("--strategies", default="replay_ed,mi_ed,aux_ed,noise_ed")
    ap.add_argument("--sizes", default="10,100,500,2000,5000")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--params", default="{}", help="JSON params added to every strategy (e.g. a smaller budget)")
    ap.add_argument("--params-for", action="append", default=[], metavar="NAME=JSON",
                    help="JSON params for one strategy only, e.g. mi_ed='{\"source_params\": {\"steps\": 100}}'")
    ap.add_argument("--run-dir", default=None, help="run folder (default runs/sweep-<config>)")
    args = ap.parse_args(argv)

    from exmodel.config import StrategyConfig, load_config
    from exmodel.fileio import atomic_write_json
    from exmodel.progress import Progress
    from exmodel.reporting.sweep_plot import plot_buffer_sweep
    from exmodel.runner import run_experiment
    from exmodel.strategies import list_strategies

    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        extra = json.loads(args.params)
        own = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.params_for)}
    except ValueError as err:
        print(f"error: --sizes must be comma-separated integers and --params(-for) JSON objects ({err})",
              file=sys.stderr)
        return 2
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = [n for n in names if n not in list_strategies() or not n.endswith(("_ed", "_ed_paper"))]
    unknown += [f"{n} (--params-for)" for n in own if n not in names]
    problem = None
    if unknown:
        problem = f"not ED strategies: {', '.join(unknown)}"
    elif not all(isinstance(v, dict) for v in (extra, *own.values())):
        problem = "--params(-for) must be JSON objects"
    elif min(sizes) < 1:
        problem = "sizes must be ≥ 1"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    cfg.seeds = [int(s) for s in args.seeds.split(",")]
    cfg.strategies = [StrategyConfig(name=f"{n}-N{size}", type=n,
                                     params={**extra, **own.get(n, {}), "buffer_size": size})
                      for n in names for size in sizes]
    cfg.reference = {}
    run_dir = Path(args.run_dir or ROOT / "runs" / f"sweep-{cfg.name}")
    with Progress(enabled=sys.stderr.isatty()) as progress:
        results = run_experiment(cfg, run_dir, data_dir=args.data_dir, progress=progress)
    lines = {}
    for n in names:
        cells = [results["strategies"][f"{n}-N{size}"] for size in sizes]
        accs = [c["stream_accuracy"] for c in cells]
        lines[n] = {"ex_model": cells[0]["ex_model"],
                    "stream_accuracy": {k: [a[k] for a in accs] for k in ("mean", "std", "per_seed")},
                    "wall_time_s": [c["wall_time_s"]["mean"] for c in cells]}
    out = {"benchmark": Path(__file__).stem, "config": cfg.name, "data_source": results["data_source"],
           "seeds": cfg.seeds, "params": extra, "params_for": own, "sizes": sizes, "strategies": lines,
           "run_dir": str(run_dir)}
    atomic_write_json(args.out, out)
    plot = Path(args.plot or Path(args.out).with_suffix(".png"))
    plot_buffer_sweep(out, plot, title=f"{cfg.name}: stream accuracy against buffer size")
    for n, line in lines.items():
        accs = "  ".join(f"N={s}: {100 * m:5.1f}" for s, m in zip(sizes, line["stream_accuracy"]["mean"]))
        print(f"{n:<16} {accs}")
    print(f"written: {args.out}, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
