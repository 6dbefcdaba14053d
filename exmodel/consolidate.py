"""Consolidate expert bundles trained elsewhere into one model (``exmodel consolidate``).

The experts may have different architectures and input normalizations (each sees inputs in its own
normalization, since a bundle's card carries it) and even different resolutions (inputs are resized
for each expert). Their cards must agree with one another: a class id means the same class everywhere
and the inputs must have the same number of channels. The experts are distilled one after the other
with Ex-Model Distillation, as if they arrived as a stream, and the result is written as a bundle.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from exmodel import __version__
from exmodel.errors import ExmodelError
from exmodel.experts.bundle import load_bundle, save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.strategies import Step, StreamInfo, build_strategy

SOURCES = {"inversion": "mi_ed", "impression": "di_ed", "auxiliary": "aux_ed", "noise": "noise_ed"}


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


def consolidate(bundles: list[str | Path], out: str | Path, *, source: str = "inversion", arch: str = "lenet",
                arch_kwargs: dict | None = None, params: dict | None = None, seed: int = 0, device: str = "cpu",
                data_dir: str | None = None, progress=None) -> Expert:
    if source not in SOURCES:
        raise ExmodelError(f"unknown source '{source}'; available: {', '.join(SOURCES)}")
    if not bundles:
        raise ExmodelError("give at least one expert bundle")
    if (params or {}).get("smooth"):
        raise ExmodelError("smooth is an input stage of the strategy and cannot be exported in a bundle; leave it at 0")
    experts = [load_bundle(b) for b in bundles]  # each validated; fails before anything is written
    cards = [e.card for e in experts]
    k, shape, class_names = check_compatible(cards)
    norm = cards[0].normalization
    info = StreamInfo(kind="nc", num_classes=k, input_shape=shape, mean=tuple(norm.mean), std=tuple(norm.std),
                      task_classes=tuple(tuple(c.trained_class_ids) for c in cards), n_experiences=len(cards),
                      data_dir=data_dir)
    strategy = build_strategy(SOURCES[source], {**(params or {}), "arch": arch, "arch_kwargs": arch_kwargs or {}},
                              info, seed, device)
    for i, e in enumerate(experts):
        strategy.observe(Step(i, i, tuple(e.card.trained_class_ids)), e, None, progress=progress)
    learner = strategy.model.cpu().eval()
    seen = sorted({c for card in cards for c in card.trained_class_ids})
    card = ExpertCard(
        name=Path(out).name, arch=arch, arch_kwargs=dict(learner.net.arch_kwargs), class_ids=list(range(k)),
        class_names=class_names, trained_class_ids=seen, num_global_classes=k, task_id=None,
        input_shape=shape, normalization={"mean": learner.mean.flatten().tolist(), "std": learner.std.flatten().tolist()},
        training={"method": SOURCES[source], "seed": seed, "experts": [c.name for c in cards],
                  "expert_sha256": [c.weights_sha256 for c in cards], **strategy.params.model_dump()},
        library_version=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    result = Expert(card, learner.net)
    save_bundle(result, out)
    return load_bundle(out)

