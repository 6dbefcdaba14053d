"""Consolidation on an auxiliary pool: every image labelled by the expert that claims it.

All experts are at hand when they are consolidated (unlike a stream). Instead of inverting each one
into its own synthetic images, this method shows them all the same pool of real-looking images, the
``glyphs`` dataset by default (printed characters distorted like handwriting, drawn on the fly:
:mod:`exmodel.data.glyphs`). It needs no BatchNorm and no optimisation against the experts, so it
works the same for an MLP without normalization as for a CNN with BatchNorm.

1. Every expert gives its probabilities over its own classes for every pool image, each through its
   own normalization and resolution.
2. **Ownership**: an image belongs to the expert that is most confident about it (the largest
   maximum probability). An ``8`` glyph is the 5-9 expert's ``8``, not the 0-4 expert's ``3``.
   Experts are not equally confident by nature (a CNN with BatchNorm is sure of almost anything).
   With ``calibrate`` (off by default), each expert's logits are first divided by a temperature
   chosen so that its mean confidence over the pool is that value, the same for all. At 0.7 it cost
   about 2 points on the outside experts (76.38 / 80.76 % against 78.28 / 82.43 %, seeds 0 / 1).
3. The target of an image is its owner's probabilities, placed on the owner's global classes (zero
   elsewhere). The consolidated model is trained to them by KL divergence, with random shifts and
   rotations, for ``iterations`` steps.
4. ``check_fraction`` of the pool is held out. After training, each expert's **agreement** is
   measured on the held-out images it owns with a probability of at least 0.9: how often the
   model's arg-max is the expert's label.

Measured in docs/results.md ("Experts without BatchNorm"). On the two outside experts of
``examples/train_outside_experts.py`` it reached 78.28 % and 82.43 % on MNIST (seeds 0 and 1), where
generator inversion reaches 66.07 %. It does not yet reach 90 %: the 5-9 expert is more confident than
the 0-4 expert on many real ``2``s, so they go to it. The pool must look like the experts' domain:
``glyphs`` suits one-channel experts of digits and characters. For other domains, pass a pool of
your own with ``pool=`` (any dataset name ``load_dataset`` accepts, e.g. ``imagefolder:PATH``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from exmodel.data.registry import load_dataset
from exmodel.errors import ConfigError
from exmodel.experts.expert import Expert
from exmodel.params import validate_params
from exmodel.strategies.base import Params, StreamInfo
from exmodel.strategies.learner import Learner
from exmodel.synthesis.augment import make_augmentation
from exmodel.synthesis.base import fit_input


SURE = 0.9  # an owner's probability from which its label counts in the agreement report


class PoolParams(Params):
    pool: str = Field("glyphs", description="the auxiliary dataset the experts label (any load_dataset name)")
    split: str = Field("train", pattern="^(train|test)$", description="which split of the pool")
    iterations: int = Field(3000, ge=1, description="training steps of the consolidated model")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    translate: float = Field(0.1, ge=0, lt=1, description="augmentation: largest shift, fraction of the side")
    degrees: float = Field(10.0, ge=0, le=180, description="augmentation: largest rotation in degrees")
    check_fraction: float = Field(0.1, gt=0, lt=1, description="part of the pool held out for the agreement report")
    calibrate: float | None = Field(None, gt=0, lt=1, description="mean pool confidence every expert is scaled to "
                                                                "before ownership is decided; null: raw confidences")


def temperature_for(logits: torch.Tensor, mean_confidence: float, steps: int = 50) -> float:
    """The temperature ``T`` at which ``softmax(logits / T)``'s maximum averages ``mean_confidence``
    over the rows (bisection in log T over [1e-3, 1e3]; the mean confidence falls as T grows)."""
    lo, hi = 1e-3, 1e3
    for _ in range(steps):
        t = (lo * hi) ** 0.5
        if (logits / t).softmax(1).max(1).values.mean() > mean_confidence:
            lo = t
        else:
            hi = t
    return (lo * hi) ** 0.5


@torch.no_grad()
def owner_targets(experts: Sequence[Expert], x01: torch.Tensor, num_classes: int, calibrate: float | None = None,
                  batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, owner)`` for the images ``x01``: ``owner[i]`` is the index of the expert with the
    largest maximum probability over its trained classes (the first on ties), ``targets[i]`` its
    probabilities on its global classes (zeros elsewhere, rows sum to 1). With ``calibrate``, the
    probabilities compared for ownership come from logits divided by each expert's
    :func:`temperature_for` that mean confidence; the targets stay the experts' own."""
    confidence, probs = [], []
    for e in experts:
        cols = [list(e.card.class_ids).index(c) for c in e.card.trained_class_ids]
        chunks = [e(fit_input(x01[i:i + batch_size], e.card.input_shape))[:, cols]
                  for i in range(0, len(x01), batch_size)]
        logits = torch.cat(chunks) if chunks else torch.empty(0, len(cols))
        probs.append(logits.softmax(1))
        if calibrate is not None and len(logits):
            logits = logits / temperature_for(logits, calibrate)
        confidence.append(logits.softmax(1).max(1).values if len(logits) else torch.empty(0))
    owner = torch.stack(confidence, 1).argmax(1)
    targets = torch.zeros(len(x01), num_classes)
    for k, e in enumerate(experts):
        rows = owner == k
        targets[rows.nonzero(), torch.tensor(e.card.trained_class_ids)] = probs[k][rows]
    return targets, owner


def pool_distill(experts: Sequence[Expert], info: StreamInfo, arch: str, arch_kwargs: dict[str, Any] | None,
                 params: dict[str, Any] | None, seed: int, device: str = "cpu", data_dir: str | None = None,
                 progress=None) -> tuple[Learner, PoolParams, list[tuple[torch.Tensor, torch.Tensor, bool]]]:
    """Train a :class:`Learner` of ``arch`` on the pool (see the module docstring). Returns it, the
    validated parameters, and for each expert ``(images, labels, held_out=True)`` of the held-out
    images it owns, for :func:`exmodel.consolidation.expert_agreement`."""
    p: PoolParams = validate_params("pool distillation", PoolParams, params)  # type: ignore[assignment]
    splits = load_dataset(p.pool, data_dir)
    pool = splits.train if p.split == "train" else splits.test
    if pool.input_shape[0] != info.input_shape[0]:
        raise ConfigError(f"pool '{p.pool}' has {pool.input_shape[0]}-channel images but the experts take "
                          f"{info.input_shape[0]} channels; pass a pool of their kind")
    generator = torch.Generator().manual_seed(seed)
    x01 = fit_input(pool.float_images(slice(None)), info.input_shape)
    order = torch.randperm(len(x01), generator=generator)
    n_check = max(1, int(round(p.check_fraction * len(x01))))
    check, train = order[:n_check], order[n_check:]
    task = progress.add(f"labelling the pool ({p.pool})", total=1) if progress is not None else None
    targets, owner = owner_targets(experts, x01, info.num_classes, p.calibrate)
    if task is not None:
        progress.advance(task)
        progress.remove(task)
    torch.manual_seed(seed)  # the learner's initialization
    learner = Learner(info, arch, arch_kwargs).to(device)
    opt = torch.optim.Adam(learner.parameters(), lr=p.lr)
    aug = make_augmentation(translate=p.translate, degrees=p.degrees).to(device)
    task = progress.add("distilling on the pool", total=p.iterations) if progress is not None else None
    learner.train()
    for _ in range(p.iterations):
        b = train[torch.randint(len(train), (p.batch_size,), generator=generator)]
        out = learner(aug(x01[b].to(device)))
        loss = F.kl_div(F.log_softmax(out, 1), targets[b].to(device), reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove(task)
    learner.eval()
    # agreement is checked where the owner is sure (letters and other ambiguous glyphs carry an
    # expert's guess, which no model is expected to reproduce)
    sure = check[targets[check].max(1).values >= SURE]
    labels = targets[sure].argmax(1)
    samples = [(x01[sure][owner[sure] == k], labels[owner[sure] == k], True) for k in range(len(experts))]
    return learner, p, samples
