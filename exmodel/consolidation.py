"""Consolidate experts trained elsewhere into one model (``exmodel.consolidate``, ``exmodel consolidate``).

The experts may have different architectures (registered ones or ``torch.export`` programs), input
normalizations and even resolutions (inputs are resized for each expert). Their cards must agree
with one another: a class id means the same class everywhere and the inputs must have the same
number of channels. The experts are distilled one after the other with Ex-Model Distillation, as if
they arrived as a stream, without any of their data.

Afterwards each expert's share of the result is checked: on held-out synthetic samples of that expert
(drawn from its knowledge source, never distilled on, labelled by the expert), how often the
consolidated model gives the expert's label among *all* classes. An expert below
``min_agreement`` was not absorbed: a warning is issued (Python ``warnings``, and a ``warning:`` line
on the command line) and recorded in the card, under ``training.warnings``, beside the per-expert
``training.agreement``. The check sees what the synthetic samples show; it cannot see a gap between
synthetic and real images (``exmodel evaluate`` on real data can).

Experts without BatchNorm are inverted with the BatchNorm statistics of their peers that have them
(:mod:`exmodel.synthesis.borrowed`; ``borrow=False`` turns it off); the card records who borrowed
from whom under ``training.borrowed_statistics``.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from exmodel import __version__
from exmodel.errors import ConfigError, ExmodelError
from exmodel.experts.bundle import check_target, load_bundle, save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.strategies import StreamInfo
from exmodel.synthesis.borrowed import bn_layers_of, borrow_statistics

# --source on the command line -> the ED strategy (our defaults) that uses it; "pool" is not ED but
# one distillation on an auxiliary pool labelled by all experts at once (pool_distillation.py)
SOURCES = {"inversion": "mi_ed", "impression": "di_ed", "auxiliary": "aux_ed", "noise": "noise_ed", "pool": "pool"}
AUTO = "auto"  # the source chosen from what the experts' graphs contain: choose_source
CHECK_SAMPLES = 200  # held-out synthetic samples per expert for the agreement report
MIN_AGREEMENT = 0.8


class ExpertNotAbsorbed(UserWarning):
    """An expert's classes were not absorbed by the consolidated model (see the module docstring)."""


def check_compatible(cards: list[ExpertCard]) -> tuple[int, tuple[int, int, int], list[str]]:
    """Label-space size, the ex-model's input shape and the class names; one clear error otherwise."""
    names: dict[int, tuple[str, str]] = {}
    for card in cards:
        for cid, cname in zip(card.class_ids, card.class_names):
            if cid in names and names[cid][0] != cname:
                raise ExmodelError(f"experts disagree on class {cid}: '{names[cid][0]}' in {names[cid][1]} but "
                                   f"'{cname}' in {card.name}")
            names.setdefault(cid, (cname, card.name))
    channels = {c.input_shape[0] for c in cards}
    if len(channels) > 1:
        raise ExmodelError("experts take inputs with different channel counts "
                           f"({', '.join(f'{c.name}: {list(c.input_shape)}' for c in cards)}); cannot reconcile them")
    k = max(c.num_global_classes for c in cards)
    shape = max((tuple(c.input_shape) for c in cards), key=lambda s: s[1] * s[2])
    return k, shape, [names.get(i, (str(i), ""))[0] for i in range(k)]


def choose_source(experts: Sequence[Expert]) -> tuple[str, str]:
    """The knowledge source for ``source="auto"`` and why, from what the experts contain.

    Every expert with BatchNorm statistics: ``inversion`` (its generators match them; 86 % on
    Split MNIST's LeNet-BN experts). Some expert without them, all taking one-channel images:
    ``pool``, measured better on both sets of such experts there are figures for (88.60 against
    66.07 % on the outside MLP + CNN pair; 60.56 % on five plain LeNets, where ``mi_ed`` over the same
    experts as a stream reaches 40.23 %; docs/results.md,
    "Experts without BatchNorm"). Its default pool is printed characters, made for experts of digits
    and characters. Otherwise ``inversion``, with borrowed statistics and a prior that needs none."""
    without = [e.card.name for e in experts if not bn_layers_of(e)]
    if not without:
        return "inversion", "every expert has BatchNorm statistics for its generator to match"
    names = ", ".join(repr(n) for n in without)
    if all(e.card.input_shape[0] == 1 for e in experts):
        return "pool", f"expert(s) {names} have no BatchNorm statistics; one-channel experts label a pool of glyphs"
    return "inversion", (f"expert(s) {names} have no BatchNorm statistics, but the glyph pool suits one-channel "
                         "experts only; inversion with borrowed statistics and a prior that needs none")


def budget_params(params: dict[str, Any] | None, *, iterations: int | None = None,
                  generator_steps: int | None = None, budget: float | None = None,
                  strategy: str = "mi_ed") -> dict[str, Any]:
    """ED parameters with the budget options applied: ``budget`` scales the preset's distillation
    iterations and generator/optimisation steps (0.5: half the time), the other two set them."""
    from exmodel.strategies.ed import preset_params

    out = dict(params or {})
    if strategy == "pool":
        from exmodel.pool_distillation import PoolParams

        if generator_steps is not None:
            raise ExmodelError("--generator-steps does not apply to --source pool (it trains no generator)")
        if budget is not None:
            if not budget > 0:
                raise ExmodelError(f"--budget must be > 0, got {budget}")
            out.setdefault("iterations", max(1, round(PoolParams().iterations * budget)))
        if iterations is not None:
            out["iterations"] = iterations
        return out
    preset = preset_params(strategy)
    source_params = {**preset.source_params, **out.get("source_params", {})}
    if budget is not None:
        if not budget > 0:
            raise ExmodelError(f"--budget must be > 0, got {budget}")
        out.setdefault("iterations", max(1, round(preset.iterations * budget)))
        if "steps" in source_params:
            source_params["steps"] = max(1, round(source_params["steps"] * budget))
    if iterations is not None:
        out["iterations"] = iterations
    if generator_steps is not None:
        source_params["steps"] = generator_steps
    if source_params != preset.source_params:
        out["source_params"] = source_params
    return out


def _as_experts(experts: Sequence[Expert | str | Path]) -> list[Expert]:
    if not experts:
        raise ExmodelError("give at least one expert")
    return [e if isinstance(e, Expert) else load_bundle(e) for e in experts]  # each validated


@torch.no_grad()
def agreement(model: Expert, x01: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of ``x01`` for which ``model``'s arg-max over all its classes equals ``labels``."""
    if len(labels) == 0:
        return float("nan")
    hits = 0
    for start in range(0, len(x01), batch_size):
        pred = model.global_logits(x01[start:start + batch_size]).argmax(1)
        hits += int((pred == labels[start:start + batch_size]).sum())
    return hits / len(labels)


def consolidate(experts: Sequence[Expert | str | Path], out: str | Path | None = None, *, arch: str = "lenet_bn",
                source: str = AUTO, arch_kwargs: dict | None = None, params: dict | None = None,
                seed: int = 0, device: str = "cpu", data_dir: str | None = None,
                min_agreement: float = MIN_AGREEMENT, borrow: bool = True, progress=None) -> Expert:
    """Distil ``experts`` (:class:`Expert` objects or bundle paths, in stream order) into one model.

    Returns the consolidated :class:`Expert`; with ``out`` it is also written there as a bundle.
    ``params`` are Ex-Model Distillation parameters (see :func:`budget_params` for the budget), or
    with ``source="pool"`` those of :class:`~exmodel.pool_distillation.PoolParams`: all experts label
    one auxiliary pool (``glyphs`` by default) and the model is distilled on it in one go.
    With ``borrow``, experts without BatchNorm are inverted with the BatchNorm statistics of the
    experts that have them (:mod:`exmodel.synthesis.borrowed`). ``source="auto"`` (the default)
    picks the source with :func:`choose_source`; the card records which and why.
    """
    if source != AUTO and source not in SOURCES:
        raise ExmodelError(f"unknown source '{source}'; available: {', '.join([AUTO, *SOURCES])}")
    if (params or {}).get("smooth"):
        raise ExmodelError("smooth is an input stage of the strategy and cannot be exported in a bundle; leave it at 0")
    if out is not None:
        check_target(Path(out))  # an existing non-bundle is refused before any work, not after it
    experts = _as_experts(experts)
    automatic = source == AUTO
    source, reason = choose_source(experts) if automatic else (source, "chosen by the caller")
    borrowed: dict[str, list[str]] = {}
    if borrow and source != "pool":  # the pool method matches no statistics
        experts, borrowed = borrow_statistics(experts)
    cards = [e.card for e in experts]
    k, shape, class_names = check_compatible(cards)
    norm = cards[0].normalization
    info = StreamInfo(kind="nc", num_classes=k, input_shape=shape, mean=tuple(norm.mean), std=tuple(norm.std),
                      task_classes=tuple(tuple(c.trained_class_ids) for c in cards), n_experiences=len(cards),
                      data_dir=data_dir)
    # arch_kwargs may come as an argument or among the ED parameters (``--set arch_kwargs={...}``)
    kwargs = {**(params or {}).get("arch_kwargs", {}), **(arch_kwargs or {})}
    try:
        if source == "pool":
            from exmodel.pool_distillation import pool_distill

            pool_settings = {key: v for key, v in (params or {}).items() if key != "arch_kwargs"}
            learner, pool_params, samples = pool_distill(experts, info, arch, kwargs, pool_settings, seed, device,
                                                         data_dir, progress)
            learner, settings = learner.cpu().eval(), pool_params.model_dump()
        else:
            learner, settings, samples = _distill_stream(experts, info, source, arch, kwargs, params, seed, device,
                                                         progress)
    except ConfigError as err:
        if not automatic:
            raise
        raise ConfigError(f"{err} (source '{source}' was chosen because {reason}; pass another source to "
                          f"use its parameters)") from None
    seen = sorted({c for card in cards for c in card.trained_class_ids})
    result = learner.as_expert(
        seen, class_names=class_names, name=Path(out).name if out is not None else "consolidated",
        training={"method": SOURCES[source], "source": source, "source_choice": reason, "seed": seed,
                  "torch_threads": torch.get_num_threads(), "experts": [c.name for c in cards],
                  "expert_sha256": [c.weights_sha256 for c in cards], **settings},
        library_version=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    card = result.card
    what = "pool" if source == "pool" else "synthetic"
    report, warned = expert_agreement(result, cards, samples, min_agreement, what)
    card.training["agreement"], card.training["warnings"] = report, warned
    card.training["borrowed_statistics"] = borrowed
    for line in warned:
        warnings.warn(line, ExpertNotAbsorbed, stacklevel=2)
    if out is None:
        return result
    save_bundle(result, out)
    return load_bundle(out)


def _distill_stream(experts: list[Expert], info: StreamInfo, source: str, arch: str, kwargs: dict,
                    params: dict | None, seed: int, device: str, progress) -> tuple[Any, dict, list]:
    """Ex-Model Distillation over the experts in order: the learner, its settings, the agreement samples."""
    from exmodel.strategies.ed import distill_experts

    settings = {"check_samples": CHECK_SAMPLES, **(params or {}), "arch": arch, "arch_kwargs": kwargs}
    return distill_experts(SOURCES[source], experts, info, settings, seed, device, progress)


def expert_agreement(model: Expert, cards: list[ExpertCard], samples: list, min_agreement: float,
                     what: str = "synthetic") -> tuple[list[dict[str, Any]], list[str]]:
    """Per-expert agreement records and the warnings for experts below ``min_agreement``; ``what``
    names the samples (``synthetic``, or ``pool`` for the pool method)."""
    report, warned = [], []
    for card, (x01, y, held_out) in zip(cards, samples):
        if len(y) == 0:
            report.append({"expert": card.name, "classes": list(card.trained_class_ids), "samples": 0,
                           "held_out": held_out, "kind": what, "agreement": None})
            warned.append(f"expert '{card.name}' (classes {list(card.trained_class_ids)}) has no {what} samples to "
                          f"check its share of the consolidated model against")
            continue
        score = agreement(model, x01, y)
        report.append({"expert": card.name, "classes": list(card.trained_class_ids), "samples": len(y),
                       "held_out": held_out, "kind": what, "agreement": round(score, 4)})
        if not score >= min_agreement:
            warned.append(f"expert '{card.name}' (classes {list(card.trained_class_ids)}) was not absorbed: the "
                          f"consolidated model agrees with it on {100 * score:.1f} % of its {what} samples "
                          f"(threshold {100 * min_agreement:.0f} %); give it a larger budget or another source")
    return report, warned
