"""Differentiable image augmentation (paper Sec. 4.1, "Augmentations").

Synthetic images are augmented while they are generated (so that the expert's confidence does not
rest on a single pixel-exact pattern) and again during distillation. The augmentation must be
differentiable with respect to the image, since the image is what generation optimises: we use
kornia's ``RandomAffine`` (small translation and rotation, bilinear resampling) and an optional
``RandomHorizontalFlip`` (off for digits, where a flip changes the class: a mirrored 2 is no 2).

kornia draws its random parameters from torch's *global* generator, so an augmentation is
reproducible given ``torch.manual_seed``; the knowledge sources seed it from their own generator
inside a ``torch.random.fork_rng`` block (see :func:`exmodel.synthesis.base.seeded_global_rng`).

Out-of-image pixels are filled by repeating the border (``padding_mode="border"``) rather than with
zeros, because zero means "the mean colour" in normalized space but "black" in [0, 1] space; the
border is right in both.
"""

from __future__ import annotations

from typing import Literal

import kornia.augmentation as K
from torch import nn

from exmodel.errors import ConfigError

AugmentKind = Literal["affine", "none"]
AUGMENTATIONS: tuple[str, ...] = ("affine", "none")


def make_augmentation(translate: float = 0.1, degrees: float = 10.0, hflip: bool = False, p: float = 1.0,
                      kind: AugmentKind = "affine") -> nn.Module:
    """A module mapping images (B, C, H, W) to randomly augmented images of the same shape.

    ``translate`` is the largest shift as a fraction of the width/height (0.1 = 10 %), ``degrees``
    the largest rotation, ``hflip`` adds a horizontal flip with probability 0.5, and ``p`` is the
    probability that the affine transform is applied to a given image. ``kind="none"`` (or all of
    translate = degrees = 0 and no flip) gives the identity.
    """
    if kind not in AUGMENTATIONS:
        raise ConfigError(f"augmentation: unknown kind {kind!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if not 0.0 <= translate < 1.0:
        raise ConfigError(f"augmentation: translate must be in [0, 1), got {translate}")
    if not 0.0 <= degrees <= 180.0:
        raise ConfigError(f"augmentation: degrees must be in [0, 180], got {degrees}")
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augmentation: p must be in [0, 1], got {p}")
    if kind == "none":
        return nn.Identity()
    steps: list[nn.Module] = []
    if translate > 0 or degrees > 0:
        steps.append(K.RandomAffine(degrees=degrees, translate=(translate, translate) if translate > 0 else None,
                                    padding_mode="border", p=p))
    if hflip:
        steps.append(K.RandomHorizontalFlip(p=0.5))
    if not steps:
        return nn.Identity()
    return nn.Sequential(*steps)
