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
import torch
import torch.nn.functional as F
from torch import nn

from exmodel.errors import ConfigError
from exmodel.synthesis.priors import gaussian_blur3x3

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


# ----------------------------------------------------------------------------------- style jitter
# Each generator (or inverted expert) draws its images in its own "style": stroke width, contrast,
# sharpness. A student distilled on them can learn to tell the styles apart instead of the classes
# (all of an expert's classes share one style). Jittering the style during distillation removes
# that shortcut. These are not used during generation, so they need not be differentiable.

def dilate(x: torch.Tensor) -> torch.Tensor:
    """3×3 grey-level dilation (max filter): bright strokes get one pixel thicker."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


def erode(x: torch.Tensor) -> torch.Tensor:
    """3×3 grey-level erosion (min filter): bright strokes get one pixel thinner."""
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def gamma_stretch(x01: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x^γ`` per sample (``gamma`` shaped (B,)), then each image divided by its maximum so that its
    brightest pixel is 1 (images whose maximum is below 1e-3 are left dark)."""
    y = x01.clamp_min(0).pow(gamma.view(-1, *([1] * (x01.ndim - 1))))
    return y / y.amax(dim=tuple(range(1, x01.ndim)), keepdim=True).clamp_min(1e-3)


class StyleJitter(nn.Module):
    """Random stroke width, contrast and sharpness for images in [0, 1]: with probability ``morph``
    a dilation or an erosion (half each), a gamma drawn log-uniformly in [e^−gamma, e^gamma] with
    contrast stretch, and with probability ``blur`` a 3×3 Gaussian blur. Draws from torch's global
    RNG, like the kornia augmentation it follows."""

    def __init__(self, morph: float = 0.0, gamma: float = 0.0, blur: float = 0.0) -> None:
        super().__init__()
        for name, value in (("morph", morph), ("blur", blur)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"style jitter: {name} is a probability in [0, 1], got {value}")
        if gamma < 0:
            raise ConfigError(f"style jitter: gamma must be ≥ 0, got {gamma}")
        self.morph, self.gamma, self.blur = morph, gamma, blur

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        b, shape = x01.shape[0], (-1, *([1] * (x01.ndim - 1)))
        if self.morph > 0:
            r = torch.rand(b, device=x01.device).view(shape)
            x01 = torch.where(r < self.morph / 2, dilate(x01), torch.where(r > 1 - self.morph / 2, erode(x01), x01))
        if self.gamma > 0:
            x01 = gamma_stretch(x01, torch.exp((2 * torch.rand(b, device=x01.device) - 1) * self.gamma))
        if self.blur > 0:
            x01 = torch.where(torch.rand(b, device=x01.device).view(shape) < self.blur, gaussian_blur3x3(x01), x01)
        return x01


def heavy_pen(x01: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Redraw each image with probability ``p`` with a heavier pen: every pixel takes the brightest
    value of its 3x3 neighbourhood, so bright strokes on a dark ground grow by one pixel on each side.
    Handwriting varies in stroke width; printed glyphs are thinner than MNIST's 2-3 px strokes."""
    if p <= 0 or len(x01) == 0:
        return x01
    pick = torch.rand(len(x01), generator=generator) < p
    return torch.where(pick.view(-1, 1, 1, 1).to(x01.device), F.max_pool2d(x01, 3, stride=1, padding=1), x01)
