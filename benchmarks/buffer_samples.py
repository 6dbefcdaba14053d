"""Figure: what each knowledge source puts in the buffer (the paper's Fig. 2).

    python benchmarks/buffer_samples.py --out samples.png [--data-dir ../shared/data] [--preset paper]

For seed 0 of the config's expert stream, every ED strategy's knowledge source generates a few
images per class from each expert; the figure shows one panel per source (rows: classes).
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
    ap.add_argument("--config", default=str(ROOT / "configs" / "ed_split_mnist.yaml"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=("paper", "default"), default="default")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None,
                    help="cap the optimisation steps of the sources that optimise (a quick look; default: the preset's)")
    args = ap.parse_args(argv)

    import torch

    from exmodel.config import load_config
    from exmodel.data import load_dataset, resolve_data_dir
    from exmodel.reporting.samples import plot_sample_grids
    from exmodel.runner import experts_for
    from exmodel.strategies.ed import preset_params, preset_source
    from exmodel.synthesis import source_class

    cfg = load_config(args.config)
    resolved = resolve_data_dir(args.data_dir)
    data = load_dataset(cfg.scenario.dataset, resolved)
    stream, experts, _ = experts_for(cfg, data, "full" if resolved else "embedded", cfg.seeds[0], None)
    panels = {}
    for short in ("mi", "di", "aux", "replay", "noise"):
        name = f"{short}_ed" + ("_paper" if args.preset == "paper" else "")
        steps = args.steps is not None and "steps" in source_class(preset_params(name).source).Params.model_fields
        source = preset_source(name, {"steps": args.steps} if steps else None,
                               data_dir=str(resolved) if resolved else None)
        xs, ys = [], []
        for exp, expert in zip(stream, experts):
            n = args.per_class * len(exp.classes)
            x, y = source.generate(expert, n, torch.Generator().manual_seed(0), data=exp.train)
            xs.append(x)
            ys.append(y)
        panels[name] = (torch.cat(xs), torch.cat(ys))
    plot_sample_grids(panels, args.out, per_class=args.per_class, class_names=list(stream.class_names))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
