"""Benchmark: can the knowledge delegator teach a fresh clone what the model knows? (SKD Tables I-II)

    python benchmarks/skd_clone.py --data-dir ../shared/data --dataset mnist --out skd_clone_mnist.json

For each seed: the old model ``T_0`` (LeNet-BN) is trained on the base task (the first half of the
classes), then a delegator and a freshly initialised clone ``S_0`` learn from ``T_0`` alone, by
imitate & explore, without any data (by default 400 epochs, both learning rates divided by 10 after
200: the paper's schedule of 200 and 100, doubled because our batches are 64 images, not 1,024).
``S_0`` is scored on the base classes' real test images through
``T_0``'s classifier head (ψ aligns the directions of the features, so ``S_0``'s features are first
rescaled by one number, the ratio of the two models' mean feature norms on delegator images).
Variants: the full delegator and the Table II ablations (without L_cat, L_div, R_feature, the helper
BN). ``--figures DIR`` also draws the full delegator's samples per class and the real-vs-pseudo
feature plot of Fig. 4 for the first seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VARIANTS = {"full": {}, "no_cat": {"w_cat": 0.0}, "no_div": {"w_div": 0.0}, "no_feature": {"w_feature": 0.0},
            "no_helper_bn": {"helper_bn": False}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=400, help="delegator epochs (imitate steps + 1 explore step each)")
    ap.add_argument("--lr-drop-every", type=int, default=200,
                    help="divide both delegator learning rates by 10 every this many epochs (the paper: 100 of 200)")
    ap.add_argument("--imitate-steps", type=int, default=5, help="clone steps per delegator epoch (Algorithm 1: 5)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=None, help="subsample (quick runs)")
    ap.add_argument("--figures", default=None, help="folder for the samples and feature figures")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant {', '.join(unknown)}; available: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2

    import torch

    from exmodel.data import load_dataset, resolve_data_dir
    from exmodel.fileio import atomic_write_json
    from exmodel.reporting.records import environment
    from exmodel.rng import seeded
    from exmodel.scenarios import subsample_per_class
    from exmodel.strategies import StreamInfo
    from exmodel.strategies.learner import Learner
    from exmodel.synthesis.delegator import DelegatorGenerator, DelegatorSettings, train_delegator
    from exmodel.models import build_model
    from exmodel.training import FitSettings, fit

    data = load_dataset(args.dataset, resolve_data_dir(args.data_dir))
    if args.train_per_class:
        data = subsample_per_class(data, args.train_per_class, None, 0)
    k = data.train.num_classes
    base = list(range(k // 2))
    train = data.train.subset(torch.isin(data.train.labels, torch.tensor(base)).nonzero().squeeze(1))
    test = data.test.subset(torch.isin(data.test.labels, torch.tensor(base)).nonzero().squeeze(1))
    info = StreamInfo("cil", k, data.train.input_shape, data.train.mean, data.train.std, (tuple(base),), 1)
    x_test, y_test = test.float_images(), test.labels
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    teacher_acc = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        with seeded(seed):
            teacher = Learner(info, "lenet_bn")
        fit(teacher, train, FitSettings(epochs=args.teacher_epochs), torch.Generator().manual_seed(seed))
        with torch.no_grad():
            t_feat = teacher.forward_features(x_test)
            t_pred = teacher.forward_head(t_feat)[:, base].argmax(1)
        teacher_acc.append(float((t_pred == y_test).float().mean()))
        expert = teacher.as_expert(base)
        for v in variants:
            opts = dict(VARIANTS[v])
            helper_bn = opts.pop("helper_bn", True)
            with seeded(seed + 1):
                g = DelegatorGenerator(info.input_shape, 100, args.width, helper_bn)
                student = build_model("lenet_bn", **teacher.net.arch_kwargs)
            settings = replace(DelegatorSettings(epochs=args.epochs, batch_size=args.batch_size,
                                                 imitate_steps=args.imitate_steps, lr_drop_every=args.lr_drop_every),
                               **opts)
            t0 = time.perf_counter()
            terms = train_delegator(g, expert, student, settings, torch.Generator().manual_seed(seed))
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                xn = g.sample(512, torch.Generator().manual_seed(seed + 7))
                scale = teacher.net.forward_features(xn).norm(dim=1).mean() / student.forward_features(xn).norm(dim=1).mean()
                s_feat = student.forward_features(teacher.normalize(x_test)) * scale
                s_pred = teacher.forward_head(s_feat)[:, base].argmax(1)
                agree = float((s_pred == t_pred).float().mean())
            acc = float((s_pred == y_test).float().mean())
            rows[v].append({"seed": seed, "teacher_accuracy": teacher_acc[-1], "clone_accuracy": acc,
                            "agreement_with_teacher": agree, "seconds": round(seconds, 1), "final_terms": terms})
            print(f"seed {seed} {v:<13} T0 {100 * teacher_acc[-1]:6.2f}  S0 {100 * acc:6.2f}  "
                  f"agreement {100 * agree:6.2f}  {seconds:6.1f} s", flush=True)
            if args.figures and v == "full" and seed == seeds[0]:
                _figures(Path(args.figures), args.dataset, g, teacher, base, x_test, y_test, t_feat, seed)

    def stat(values):
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0, "per_seed": values}

    out = {"benchmark": "skd_clone", "dataset": args.dataset, "base_classes": base, "delegator_epochs": args.epochs,
           "lr_drop_every": args.lr_drop_every, "imitate_steps": args.imitate_steps,
           "width": args.width, "batch_size": args.batch_size, "environment": environment(seeds, "cpu"),
           "teacher_accuracy": stat(teacher_acc),
           "variants": {v: {"clone_accuracy": stat([r["clone_accuracy"] for r in rs]),
                            "agreement_with_teacher": stat([r["agreement_with_teacher"] for r in rs]),
                            "seconds": stat([r["seconds"] for r in rs]), "runs": rs} for v, rs in rows.items()}}
    atomic_write_json(args.out, out)
    print(f"written: {args.out}")
    return 0


def _figures(folder: Path, dataset: str, g, teacher, base, x_test, y_test, t_feat, seed: int) -> None:
    import torch

    from exmodel.reporting.feature_plot import plot_real_vs_pseudo
    from exmodel.reporting.samples import plot_sample_grids

    folder.mkdir(parents=True, exist_ok=True)
    xn = g.sample(2000, torch.Generator().manual_seed(seed + 11))
    with torch.no_grad():
        p_feat = teacher.net.forward_features(xn)
        p_y = torch.tensor(base)[teacher.forward_head(p_feat)[:, base].argmax(1)]
    x01 = xn * teacher.std + teacher.mean
    plot_sample_grids({"delegator (labels: T0)": (x01, p_y)}, folder / f"skd_samples_{dataset}.png", per_class=10)
    keep = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(0))[:1000]
    plot_real_vs_pseudo(t_feat[keep], y_test[keep], p_feat[:300], p_y[:300], folder / f"skd_features_{dataset}.png",
                        f"{dataset}: T0's features of real test images and of delegator images (PCA)")


if __name__ == "__main__":
    sys.exit(main())
