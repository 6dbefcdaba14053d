"""``glyphs``: printed characters drawn on the fly, an auxiliary pool for experts of handwriting.

Experts of digits or characters (MNIST-like: one channel, bright strokes on black) need images that
*look like strokes* to be distilled from. An expert with BatchNorm records what its data looked like
(its BN statistics), and a generator can be pulled towards that. An expert without BatchNorm records
nothing, and images optimised against it become textures that it accepts with full confidence
(docs/results.md, "Experts without BatchNorm"). This dataset is a pool of stroke images that needs
no download and no data of anybody's. Each image is one of the 62 characters ``0-9A-Za-z`` in
Pillow's built-in scalable font, at a random size (16-23 px), with a random stroke width. It is then
distorted like handwriting: rotation ±15°, shear ±15°, scale 0.8-1.1, shift ±8 %, and an elastic
warp on 70 % of the images.

The images are made from a seed: ``train`` from seed 0 and ``test`` from seed 1, the same on every
machine with the same Pillow and kornia. The labels are the character's index in ``0-9A-Za-z``. The
auxiliary source ignores them: the expert labels every image itself. Needs Pillow built with FreeType
(the wheels on PyPI are).
"""

from __future__ import annotations

import numpy as np
import torch

from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import DataError

NAME = "glyphs"
CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SIZES = {"train": 12_000, "test": 2_000}
SIDE = 28


def render(n: int, seed: int) -> ImageDataset:
    """``n`` glyph images (uint8, (n, 1, 28, 28)) made from ``seed``; see the module docstring."""
    try:
        from PIL import Image, ImageDraw, ImageFont, features
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError("dataset 'glyphs' needs Pillow (pip install pillow)") from None
    if not features.check("freetype2"):
        raise DataError("dataset 'glyphs' needs Pillow built with FreeType (the PyPI wheels are)")
    rng = np.random.default_rng(seed)
    fonts = {size: ImageFont.load_default(size=size) for size in range(16, 24)}
    labels = rng.integers(len(CHARACTERS), size=n)
    images = np.empty((n, SIDE, SIDE), dtype=np.uint8)
    for i, k in enumerate(labels):
        img = Image.new("L", (SIDE, SIDE), 0)
        centre = (SIDE // 2 + int(rng.integers(-2, 3)), SIDE // 2 + int(rng.integers(-2, 3)))
        ImageDraw.Draw(img).text(centre, CHARACTERS[k], fill=255, font=fonts[int(rng.integers(16, 24))], anchor="mm",
                                 stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
        images[i] = np.asarray(img)
    x = torch.from_numpy(images).unsqueeze(1).float() / 255
    return ImageDataset(_distort(x, seed), torch.from_numpy(labels).long(), tuple(CHARACTERS), NAME, (0.5,), (0.5,))


def _distort(x01: torch.Tensor, seed: int) -> torch.Tensor:
    import kornia.augmentation as K

    aug = K.AugmentationSequential(
        K.RandomAffine(degrees=15, translate=(0.08, 0.08), scale=(0.8, 1.1), shear=15, p=1.0),
        K.RandomElasticTransform(kernel_size=(15, 15), sigma=(4.0, 4.0), alpha=(0.5, 0.5), p=0.7))
    with torch.random.fork_rng(devices=[]):  # kornia draws from the global generator: seed it, then restore it
        torch.manual_seed(seed)
        out = torch.cat([aug(x01[i:i + 1000]) for i in range(0, len(x01), 1000)])
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def load_glyphs() -> DatasetSplits:
    train, test = render(SIZES["train"], 0), render(SIZES["test"], 1)
    mean = (float(train.images.float().mean() / 255),)
    std = (float(train.images.float().std() / 255),)
    as_train = ImageDataset(train.images, train.labels, train.class_names, NAME, mean, std)
    return DatasetSplits(as_train, ImageDataset(test.images, test.labels, test.class_names, NAME, mean, std))
