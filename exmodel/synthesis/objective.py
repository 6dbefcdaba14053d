"""The synthesis objective shared by pixel optimisation and generator training.

Both :func:`~exmodel.synthesis.inversion.optimise_images` (images optimised one pixel at a time) and
:class:`~exmodel.synthesis.generative.GenerativeInversion` (a generator trained to draw them) minimise
a target loss on the expert's logits of augmented images plus the same priors of
:mod:`~exmodel.synthesis.priors`. :class:`PriorParams` holds the settings of those shared terms and
:func:`prior_terms` adds them up; each loop adds what is its own (the pixel loop's L2 and blur
priors on normalized pixels).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from exmodel.synthesis.base import SourceParams
from exmodel.synthesis.priors import BNStatsRecorder, diversity_loss, pixel_l1, total_variation


class PriorParams(SourceParams):
    """Target temperature, prior weights and augmentation, common to every optimising source."""

    temperature: float = Field(1.0, gt=0, description="softmax temperature τ of the target loss")
    w_bn: float = Field(1e-3, ge=0, description="weight of BN statistics matching (experts with BN only)")
    bn_first: float = Field(1.0, ge=0, description="extra factor on the first BN layer's term (DeepInversion: 10)")
    w_div: float = Field(0.0, ge=0, description="weight of the within-class feature diversity loss (extra)")
    w_l1: float = Field(0.0, ge=0, description="weight of the summed [0, 1] pixel intensity (dark-background "
                                               "sparsity prior, extra)")
    w_tv: float = Field(0.0, ge=0, description="weight of total variation (extra)")
    augment: Literal["affine", "none"] = Field("affine", description="augmentation during optimisation")
    translate: float = Field(0.1, ge=0, lt=1, description="largest shift, fraction of the image side")
    degrees: float = Field(10.0, ge=0, le=180, description="largest rotation in degrees")
    hflip: bool = Field(False, description="random horizontal flips (off for digits)")


def prior_terms(p: PriorParams, *, x01: torch.Tensor, tv_input: torch.Tensor, features: torch.Tensor,
                labels: torch.Tensor, bn: BNStatsRecorder | None) -> torch.Tensor | float:
    """``w_l1·L1(x01) + w_tv·TV(tv_input) + w_bn·BN + w_div·diversity(features, labels)``, each term
    only when its weight is non-zero (the BN term only with a recorder ``bn``, i.e. an expert with
    BatchNorm layers). ``tv_input`` is the image the TV prior sees (normalized pixels in the pixel
    loop, [0, 1] pixels for the generator)."""
    loss: torch.Tensor | float = 0.0
    if p.w_l1:
        loss = loss + p.w_l1 * pixel_l1(x01)
    if p.w_tv:
        loss = loss + p.w_tv * total_variation(tv_input)
    if bn is not None:
        loss = loss + p.w_bn * bn.loss(p.bn_first)
    if p.w_div:
        loss = loss + p.w_div * diversity_loss(features, labels)
    return loss
