"""Benchmark: which training of the beneficial biases pays, chosen on a validation split (SKILL Eq. 1-2)?

    python benchmarks/lll_bb.py --data-dir ../shared/data --out lll_bb.json

For each chosen SKILL-mini task, 20 % of each class's training images are held out; the task's head
is fitted (L-BFGS) on the features of the rest, then biases and head are trained together through the
frozen EfficientNet-Lite0 for every (learning rate, epochs) of the grid, and scored on the held-out
images beside the plain head. The test images are not touched: the chosen setting is then run on
the whole benchmark by ``configs/lll_skill_mini_table1.yaml`` (``bb.lr``, ``bb.epochs``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="mnist_0_4,letters_a_j,symbols,photos")
    ap.add_argument("--lrs", default="0.001,0.01,0.03")
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--head-lrs", default="same", help="the head's learning rates ('same': the biases'; 0: frozen)")
    ap.add_argument("--refit", default="no", help="refit the head by L-BFGS on the biased features: no, yes or no,yes")
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: $EXMODEL_CACHE_DIR or ~/.cache/exmodel)")
    args = ap.parse_args(argv)

    import torch

    from exmodel.agents.features import FeatureCache, lite0_backbone
    from exmodel.agents.lll import BiasParams, HeadParams, biased_features, learn_biases, learn_task
    from exmodel.agents.sequential import validation_split
    from exmodel.data.skill_mini import build_skill_mini
    from exmodel.experts.zoo import default_cache_dir

    torch.manual_seed(0)
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bench = {t.name: t for t in build_skill_mini(args.data_dir, "full", 0)}
    unknown = [t for t in wanted if t not in bench]
    if unknown:
        raise SystemExit(f"unknown task {unknown[0]!r}; SKILL-mini has {', '.join(bench)}")
    grid = [(float(lr), int(e), None if h == "same" else float(h), r == "yes") for lr in args.lrs.split(",")
            for e in args.epochs.split(",") for h in args.head_lrs.split(",") for r in args.refit.split(",")]
    backbone = lite0_backbone(args.side)
    cache = FeatureCache(Path(args.cache_dir or default_cache_dir()) / "features")
    rows = []
    for name in wanted:
        train = bench[name].splits.train
        feats = cache.features(backbone, train)
        fit, held = validation_split(train.labels, 0.2, 0)
        part = train.subset(fit)
        k = learn_task(name, part, feats[fit], backbone, HeadParams(), 0, ())
        plain = float(((feats[held] @ k.head_weight.T + k.head_bias).argmax(1) == train.labels[held]).float().mean())
        fit_acc = float(((feats[fit] @ k.head_weight.T + k.head_bias).argmax(1) == train.labels[fit]).float().mean())
        row = {"task": name, "plain": plain, "plain_fit": fit_acc, "bb": []}
        for lr, epochs, head_lr, refit in grid:
            t0 = time.perf_counter()
            state, w, b = learn_biases(part, backbone, (k.head_weight, k.head_bias), BiasParams(epochs, lr, 64, head_lr, refit), 0)
            f = biased_features(train.images[held], backbone, state)
            acc = float(((f @ w.T + b).argmax(1) == train.labels[held]).float().mean())
            size = max(float(v.abs().max()) for v in state.values())
            row["bb"].append({"lr": lr, "epochs": epochs, "head_lr": head_lr, "refit": refit, "held_out": acc, "gain": acc - plain,
                              "largest_bias": size, "seconds": time.perf_counter() - t0})
            print(f"{name}: plain {plain:.4f} | BB lr {lr:g} (head {lr if head_lr is None else head_lr:g}{', refit' if refit else ''}) x {epochs} epochs {acc:.4f} ({acc - plain:+.4f}), "
                  f"largest bias {size:.3f}, {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append(row)
        Path(args.out).write_text(json.dumps({"side": args.side, "grid": grid, "tasks": rows}, indent=1))
    mean_gain = {f"lr {lr:g}, head lr {lr if h is None else h:g}{', refit' if rf else ''}, {e} epochs":
                 sum(r["bb"][i]["gain"] for r in rows) / len(rows) for i, (lr, e, h, rf) in enumerate(grid)}
    best = max(mean_gain, key=mean_gain.get)
    Path(args.out).write_text(json.dumps({"side": args.side, "grid": grid, "tasks": rows, "mean_gain": mean_gain,
                                          "best": best}, indent=1))
    print(f"mean held-out gain: {mean_gain}; best: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
