"""How good are a knowledge source's images? Two quick measures, without running Ex-Model Distillation.

    python benchmarks/source_quality.py --data-dir ../shared/data --strategies mi_ed,mi_ed_paper \\
        --validation-fraction 0.1 --out quality.json

For one seed of the config's expert stream, each named ED strategy's knowledge source draws
``--per-expert`` images from every expert (its preset's settings), and two things are measured:

* **judge agreement**: a reference classifier trained on the stream's *real* training data (all
  classes; a diagnostic that sees the data, never part of a strategy) labels the synthetic images;
  the fraction it gives their buffer label, overall and by quintile of the expert's own confidence;
* **student accuracy**: a fresh model of the experts' architecture trained with cross-entropy on the
  union of all experts' synthetic images (with the strategy's augmentation and style jitter), then
  tested on real images of every class. It is ED without the stream: what the images teach when all
  of them are available at once, in about a minute instead of ten.

Use ``--validation-fraction`` to choose settings on data carved from the training set. The JSON keeps
every number; a table is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def agreement_by_quintile(ok, confidence) -> list[float | None]:
    """Mean of ``ok`` (0/1 per sample) within each fifth of the samples ranked by ``confidence``,
    most confident first; None for an empty fifth (fewer than five samples)."""
    import torch

    n = len(ok)
    order = torch.argsort(torch.as_tensor(confidence, dtype=torch.float64), descending=True, stable=True)
    ok = torch.as_tensor(ok, dtype=torch.float64)[order]
    out = []
    for q in range(5):
        part = ok[q * n // 5:(q + 1) * n // 5]
        out.append(float(part.mean()) if len(part) else None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "ed_split_mnist.yaml"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--strategies", default="mi_ed", help="comma-separated ED strategies (their sources)")
    ap.add_argument("--seed", type=int, default=0, help="the stream and its experts")
    ap.add_argument("--validation-fraction", type=float, default=0.0)
    ap.add_argument("--per-expert", type=int, default=400, help="images drawn from each expert")
    ap.add_argument("--judge-epochs", type=int, default=2)
    ap.add_argument("--student-iterations", type=int, default=1500)
    ap.add_argument("--student-seeds", default="0,1")
    ap.add_argument("--source-params", default="{}", help="JSON object updating every source's preset settings, "
                                                          "e.g. '{\"bn_first\": 10}'")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from exmodel.config import load_config
    from exmodel.data import load_dataset, resolve_data_dir
    from exmodel.errors import ExmodelError
    from exmodel.fileio import atomic_write_json
    from exmodel.runner import experts_for, stream_info
    from exmodel.strategies.ed import is_ed
    from exmodel.strategies.joint import concat

    names = [s for s in args.strategies.split(",") if s]
    try:
        for name in names:
            if not is_ed(name):
                raise ExmodelError(f"{name} is not an Ex-Model Distillation strategy")
        try:
            overrides = json.loads(args.source_params)
        except json.JSONDecodeError as err:
            raise ExmodelError(f"--source-params is not JSON: {err}") from None
        if not isinstance(overrides, dict):
            raise ExmodelError("--source-params must be a JSON object")
        if not 0 <= args.validation_fraction < 1:
            raise ExmodelError("--validation-fraction must be in [0, 1)")
        if args.per_expert < 1:
            raise ExmodelError("--per-expert must be ≥ 1")
        cfg = load_config(args.config)
        cfg = cfg.model_copy(update={"scenario": cfg.scenario.model_copy(
            update={"validation_fraction": args.validation_fraction})})
        resolved = resolve_data_dir(args.data_dir)
        data = load_dataset(cfg.scenario.dataset, resolved)
        sources = {name: _source(name, overrides, resolved) for name in names}  # bad settings fail here
    except ExmodelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stream, experts, _ = experts_for(cfg, data, "full" if resolved else "embedded", args.seed, None)
    info = stream_info(stream)
    real_train = concat([e.train for e in stream])
    real_test = concat([e.test for e in stream])
    arch = experts[0].card.arch
    kwargs = {k: v for k, v in experts[0].card.arch_kwargs.items() if k not in ("num_classes", "heads")}

    t0 = time.perf_counter()
    judge = _judge(info, arch, kwargs, real_train, args.judge_epochs, args.seed)
    judge_acc = _accuracy(judge, real_test)
    print(f"judge (real data, {args.judge_epochs} epochs): {100 * judge_acc:.2f} % on the real test images "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    results = {}
    for name in names:
        results[name] = _measure(name, sources[name], stream, experts, info, arch, kwargs, judge, real_test, args)
        r = results[name]
        print(f"{name:<14} judge agreement {100 * r['judge_agreement']:.1f} %  student "
              f"{100 * r['student_accuracy']['mean']:.2f} ± {100 * r['student_accuracy']['std']:.2f} %  "
              f"(generation {r['generation_time_s']:.0f} s)", flush=True)
    atomic_write_json(Path(args.out), {
        "config": cfg.name, "seed": args.seed, "validation_fraction": args.validation_fraction,
        "per_expert": args.per_expert, "source_params": overrides, "judge_accuracy": judge_acc, "strategies": results})
    print(f"written: {args.out}")
    return 0


def _judge(info, arch, kwargs, real_train, epochs, seed):
    import torch

    from exmodel.strategies.learner import Learner
    from exmodel.training import FitSettings, fit

    torch.manual_seed(seed)
    model = Learner(info, arch, kwargs)
    fit(model, real_train, FitSettings(epochs=epochs), torch.Generator().manual_seed(seed))
    return model.eval()


def _accuracy(model, data) -> float:
    from exmodel.training import predict_logits

    return float((predict_logits(model, data).argmax(1) == data.labels).float().mean())


def _source(name, overrides, resolved):
    """The knowledge source of strategy ``name``'s preset, its settings updated by ``overrides``."""
    from exmodel.strategies.ed import preset_source

    return preset_source(name, overrides, data_dir=str(resolved) if resolved else None)


def _measure(name, source, stream, experts, info, arch, kwargs, judge, real_test, args) -> dict:
    import torch

    from exmodel.strategies.ed import preset_params

    p = preset_params(name)
    gen = torch.Generator().manual_seed(args.seed)
    xs, ys, oks, per_expert, t = [], [], [], [], time.perf_counter()
    for exp, expert in zip(stream, experts):
        x, y = source.generate(expert, args.per_expert, gen, data=exp.train)
        source.release()
        chosen = list(expert.card.trained_class_ids)
        with torch.no_grad():
            judged = judge(x).argmax(1)
            units = expert.units(chosen)
            confidence, best = expert(x)[:, units].softmax(1).max(1)
        ok = (judged == y).float()
        oks.append(ok)
        per_expert.append({"classes": chosen, "judge_agreement": float(ok.mean()),
                           "expert_agrees_with_label": float((torch.tensor(chosen)[best] == y).float().mean()),
                           "agreement_by_confidence_quintile": agreement_by_quintile(ok, confidence)})
        xs.append(x)
        ys.append(y)
    gen_time = time.perf_counter() - t
    x, y = torch.cat(xs), torch.cat(ys)
    accs = [_student(info, arch, kwargs, x, y, p, int(s), args.student_iterations, real_test)
            for s in args.student_seeds.split(",") if s]
    return {"source": p.source, "generation_time_s": gen_time,
            "judge_agreement": float(torch.cat(oks).mean()),
            "per_expert": per_expert,
            "student_accuracy": {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                                 "per_seed": accs}}


def _student(info, arch, kwargs, x01, y, p, seed, iterations, real_test) -> float:
    """CE training of a fresh model on the synthetic images with the strategy's augmentation and
    style jitter; its accuracy on the real test images."""
    import torch
    import torch.nn.functional as F

    from exmodel.strategies.learner import Learner
    from exmodel.synthesis.augment import StyleJitter, make_augmentation

    torch.manual_seed(seed)
    model = Learner(info, arch, kwargs).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aug = make_augmentation(p.translate, p.degrees, p.hflip) if p.augment else None
    jitter = StyleJitter(p.jitter_morph, p.jitter_gamma, p.jitter_blur) \
        if (p.jitter_morph or p.jitter_gamma or p.jitter_blur) else None
    g = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        idx = torch.randint(len(x01), (min(128, len(x01)),), generator=g)
        xb = x01[idx]
        if aug is not None:
            with torch.no_grad():
                xb = aug(xb)
        if jitter is not None:
            xb = jitter(xb)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _accuracy(model.eval(), real_test)


if __name__ == "__main__":
    sys.exit(main())
