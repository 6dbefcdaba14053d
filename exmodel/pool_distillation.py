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
3. **Training**: every step draws a batch from the pool, redraws half of its images with a heavier
   pen (strokes one pixel wider on each side, :func:`~exmodel.synthesis.augment.heavy_pen`), shifts
   and rotates them, and only then asks the experts (steps 1 and 2), so that the targets describe the
   very images the model sees. The target of an image is its owner's probabilities, placed on the
   owner's global classes (zero elsewhere). The model is trained to them by KL divergence for
   ``iterations`` steps.
4. ``check_fraction`` of the pool is held out. After training, each expert's **agreement** is
   measured on the held-out images it owns with a probability of at least 0.9: how often the
   model's arg-max is the expert's label.

Measured in docs/results.md ("Experts without BatchNorm"), on the two outside experts of
``examples/train_outside_experts.py``, validated on 10,000 MNIST training images that no expert saw
as test data (seeds 0 / 1). Labels computed once on the plain pool, 3,000 steps: 79.82 / 83.27 %.
Labels drawn on every augmented batch with the heavier pen on half of them, 3,000 steps: 86.53 /
89.37 %; 6,000 steps (the default): 88.94 / 90.52 %. A cosine learning-rate schedule did not help
(89.25 / 88.99 %). Generator inversion reaches 66.07 % on the MNIST test set. What remains is
ownership: the 5-9 expert is more confident than the 0-4 expert on about a third of the real ``2``s.
The pool must look like the experts' domain: ``glyphs`` suits one-channel experts of digits and
characters. For other domains, pass a pool of your own with ``pool=`` (any dataset name
``load_dataset`` accepts, e.g. ``imagefolder:PATH``) and ``heavy_pen=0`` unless its images are
bright strokes on a dark ground.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from exmodel.data.registry import load_dataset
from exmodel.errors import ConfigError
from exmodel.loop import Batch, LoopSettings, train_loop
from exmodel.experts.expert import Expert
from exmodel.params import validate_params
from exmodel.rng import seeded
from exmodel.strategies.base import Params, StreamInfo
from exmodel.strategies.learner import Learner
from exmodel.synthesis.augment import heavy_pen, make_augmentation
from exmodel.synthesis.base import fit_input


SURE = 0.9  # an owner's probability from which its label counts in the agreement report


class PoolParams(Params):
    pool: str = Field("glyphs", description="the auxiliary dataset the experts label (any load_dataset name)")
    split: str = Field("train", pattern="^(train|test)$", description="which split of the pool")
    iterations: int = Field(6000, ge=1, description="training steps of the consolidated model")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    translate: float = Field(0.1, ge=0, lt=1, description="augmentation: largest shift, fraction of the side")
    degrees: float = Field(10.0, ge=0, le=180, description="augmentation: largest rotation in degrees")
    heavy_pen: float = Field(0.5, ge=0, le=1, description="augmentation: share of images redrawn with strokes "
                                                         "one pixel wider on each side (0 for pools of photos)")
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
def expert_logits(expert: Expert, x01: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The expert's logits on its trained classes, ``(len(x01), len(trained_class_ids))``, each image
    fitted to its input shape."""
    cols = expert.units(expert.card.trained_class_ids)
    chunks = [expert(fit_input(x01[i:i + batch_size], expert.card.input_shape))[:, cols]
              for i in range(0, len(x01), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, len(cols))


def calibration_temperatures(experts: Sequence[Expert], x01: torch.Tensor, mean_confidence: float) -> list[float]:
    """Each expert's :func:`temperature_for` ``mean_confidence`` over the images ``x01``."""
    return [temperature_for(expert_logits(e, x01), mean_confidence) if len(x01) else 1.0 for e in experts]


@torch.no_grad()
def owner_targets(experts: Sequence[Expert], x01: torch.Tensor, num_classes: int, calibrate: float | None = None,
                  temperatures: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, owner)`` for the images ``x01``: ``owner[i]`` is the index of the expert with the
    largest maximum probability over its trained classes (the first on ties), ``targets[i]`` its
    probabilities on its global classes (zeros elsewhere, rows sum to 1). Ownership may compare
    calibrated probabilities: logits divided by each expert's ``temperatures``, or with ``calibrate``
    by the temperatures that give that mean confidence over ``x01`` (:func:`temperature_for`). The
    targets stay the experts' own probabilities."""
    logits = [expert_logits(e, x01) for e in experts]
    if temperatures is None and calibrate is not None:
        temperatures = [temperature_for(z, calibrate) if len(z) else 1.0 for z in logits]
    scaled = logits if temperatures is None else [z / t for z, t in zip(logits, temperatures, strict=True)]
    confidence = torch.stack([z.softmax(1).max(1).values if len(z) else torch.empty(0) for z in scaled], 1)
    owner = confidence.argmax(1)
    targets = torch.zeros(len(x01), num_classes)
    for k, (e, z) in enumerate(zip(experts, logits)):
        rows = owner == k
        targets[rows.nonzero(), torch.tensor(e.card.trained_class_ids)] = z[rows].softmax(1)
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
    temperatures = None if p.calibrate is None else calibration_temperatures(experts, x01[train], p.calibrate)
    with seeded(seed):  # the learner's initialization and kornia's draws
        learner = Learner(info, arch, arch_kwargs).to(device)

        def draw() -> Batch:
            batch = x01[train[torch.randint(len(train), (p.batch_size,), generator=generator)]]
            return Batch(heavy_pen(batch, p.heavy_pen, generator).to(device))

        def loss(model, batch: Batch) -> dict[str, torch.Tensor]:  # the owners label the augmented images
            targets, _ = owner_targets(experts, batch.x.cpu(), info.num_classes, temperatures=temperatures)
            return {"kl": F.kl_div(F.log_softmax(model(batch.x), 1), targets.to(device), reduction="batchmean")}

        train_loop(learner, draw, loss, LoopSettings(iterations=p.iterations, optimizer="adam", lr=p.lr), generator,
                   augment=make_augmentation(translate=p.translate, degrees=p.degrees).to(device), progress=progress,
                   description="distilling on the pool")
    # agreement is checked where the owner is sure (letters and other ambiguous glyphs carry an
    # expert's guess, which no model is expected to reproduce)
    held = x01[check]
    targets, owner = owner_targets(experts, held, info.num_classes, temperatures=temperatures)
    sure = targets.max(1).values >= SURE
    held, labels, owner = held[sure], targets[sure].argmax(1), owner[sure]
    samples = [(held[owner == k], labels[owner == k], True) for k in range(len(experts))]
    return learner, p, samples
