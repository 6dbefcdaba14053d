"""SKILL-mini: 13 image classification tasks from 5 sources, every one available offline.

The SKILL paper's benchmark (``../shared/papers/004_…``, 102 tasks, 5,033 classes) is built from
downloads; this one is built from what a machine with PyPI and the MNIST files has. Each task has
real class names and its own images (no two tasks share an image source region), so a task mapper
has to tell them apart:

=====================  ==============================================  =========================
task                   classes                                         source (licence)
=====================  ==============================================  =========================
mnist_0_4, mnist_5_9   the digits                                      MNIST (CC BY-SA 3.0)
fashion_a, fashion_b   T-shirt/top … Coat, Sandal … Ankle boot         Fashion-MNIST (MIT)
uci_digits             0-9, 8x8 scans                                  scikit-learn ``load_digits``
                                                                       (UCI optdigits, CC BY 4.0)
letters_a_j,           printed letters (notMNIST-style), 21 fonts      fonts shipped with
letters_k_t                                                            matplotlib: DejaVu (Bitstream
printed_digits         printed digits 0-9                              Vera licence), STIX (SIL OFL
symbols                + - = % & @ # $ ? ! * /  (DejaVu, STIX only)    1.1), BaKoMa Computer Modern;
typefaces              which of 5 type families drew 2 characters      Pillow's Aileron (OFL)
textures               8 CC0 / public-domain images cut into patches   scikit-image ``data``
photos                 7 CC0 / public-domain photos cut into patches   scikit-image ``data``
faces                  face / not a face (LFW crops)                   scikit-image ``lfw_subset``
=====================  ==============================================  =========================

Everything is drawn from a seed: the same tasks on every machine with the same package versions
(recorded by :func:`manifest`). Patches of a texture or photo come from its top 70 % for training and
its bottom 30 % for testing. ``size="tiny"`` keeps a few images per class (tests, the demo); the
MNIST and Fashion-MNIST tasks then read exmodel's embedded subsets, so no data directory is needed.

Images are kept as they are (1 or 3 channels, 8 to 48 px); the backbone resizes and replicates.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import DataError

# images per class (train, test)
PER_CLASS = {"full": (200, 60), "tiny": (8, 4)}
GLYPH_SIDE, PATCH_SIDE, PATCH_SOURCE_SIDE = 28, 48, 256
LETTERS_A_J, LETTERS_K_T, DIGITS = "ABCDEFGHIJ", "KLMNOPQRST", "0123456789"
SYMBOLS = "+-=%&@#$?!*/"
# Type families of the typefaces task: matplotlib font files (Computer Modern: its roman faces)
FAMILIES = {
    "DejaVu Sans": ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique"),
    "DejaVu Serif": ("DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic"),
    "DejaVu Sans Mono": ("DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique",
                         "DejaVuSansMono-BoldOblique"),
    "STIX General": ("STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta"),
    "Computer Modern Roman": ("cmr10", "cmb10", "cmti10"),
}
TEXTURES = {"brick": "brick", "grass": "grass", "gravel": "gravel", "cells": "cell", "coins": "coins",
            "galaxies": "hubble_deep_field", "tissue": "immunohistochemistry", "retina": "retina"}
PHOTOS = {"astronaut": "astronaut", "cameraman": "camera", "cat": "chelsea", "clock": "clock",
          "coffee cup": "coffee", "rocket": "rocket", "printed text": "text"}
FASHION_A, FASHION_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
TRAIN_SHARE = 0.7  # patches: rows above this share of the image train, rows below test

SOURCES = {
    "mnist": "MNIST (LeCun, Cortes, Burges), ../shared/data or exmodel's embedded subset; CC BY-SA 3.0",
    "fashion_mnist": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), ../shared/data or embedded subset; MIT",
    "sklearn_digits": "scikit-learn load_digits: UCI Optical Recognition of Handwritten Digits; CC BY 4.0",
    "matplotlib_fonts": "TrueType fonts shipped in matplotlib's mpl-data: DejaVu (Bitstream Vera / public "
                        "domain changes), STIX (SIL OFL 1.1), BaKoMa Computer Modern (free, see LICENSE_BAKOMA); "
                        "Pillow's built-in Aileron (SIL OFL 1.1)",
    "skimage_data": "scikit-image data: images marked CC0 or public domain in their docstrings "
                    "(brick, grass, gravel: CC0Textures / DeviantArt CC0; hubble_deep_field, rocket: public "
                    "domain; astronaut, text: public domain; camera, chelsea, coffee, clock, cell, retina: CC0; "
                    "coins, immunohistochemistry: no known restrictions)",
    "skimage_lfw": "scikit-image lfw_subset: 100 face and 100 background crops of Labeled Faces in the Wild "
                   "(Huang et al. 2007), 25x25; research use",
}


@dataclass(frozen=True)
class SkillTask:
    name: str
    source: str  # a key of SOURCES
    splits: DatasetSplits

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.splits.train.class_names


# ----------------------------------------------------------------------------------------- helpers
def _dataset(images: np.ndarray, labels: np.ndarray, names, task: str) -> ImageDataset:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()
    return ImageDataset(x, torch.from_numpy(labels.astype(np.int64)), tuple(names), task)


def _per_class(labels: np.ndarray, classes, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` indices of each class of ``classes``, drawn without replacement, in class order."""
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.concatenate(out)


def _class_subset(splits: DatasetSplits, classes, name: str, size: str, rng) -> DatasetSplits:
    out = []
    for part, n in zip((splits.train, splits.test), PER_CLASS[size]):
        labels = part.labels.numpy()
        idx = _per_class(labels, classes, n, rng)
        remap = {c: i for i, c in enumerate(classes)}
        new = np.array([remap[c] for c in labels[idx]])
        out.append(_dataset(part.images[idx].numpy(), new, [part.class_names[c] for c in classes], name))
    return DatasetSplits(*out)


def _font_files() -> dict[str, Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return {p.stem: p for p in folder.glob("*.ttf")}


def _render(text: str, font, rng: np.random.Generator, side: int = GLYPH_SIDE) -> np.ndarray:
    """``text`` drawn white on black, centred with a small random shift and rotation, ``side`` px."""
    from PIL import Image, ImageDraw

    canvas = 2 * side
    img = Image.new("L", (canvas, canvas), 0)
    centre = (canvas // 2 + int(rng.integers(-2, 3)), canvas // 2 + int(rng.integers(-2, 3)))
    ImageDraw.Draw(img).text(centre, text, fill=255, font=font, anchor="mm")
    img = img.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
    crop = (canvas - side) // 2
    return np.asarray(img.crop((crop, crop, crop + side, crop + side)))


def _glyph_task(name: str, characters: str, fonts: list, size: str, rng, *, chars_per_image: int = 1,
                class_names=None, by_font: bool = False) -> SkillTask:
    """Printed characters (or, with ``by_font``, random characters labelled by their font's family)."""
    from PIL import ImageFont

    n_train, n_test = PER_CLASS[size]
    classes = class_names or list(characters)
    splits = []
    for n, held_out in ((n_train, False), (n_test, True)):
        images, labels = [], []
        for c in range(len(classes)):
            family = fonts[c] if by_font else fonts
            for _ in range(n):
                path = family[int(rng.integers(len(family)))]
                px = int(rng.integers(14, 20)) if chars_per_image > 1 else int(rng.integers(18, 25))
                font = ImageFont.load_default(size=px) if path is None else ImageFont.truetype(str(path), px)
                text = "".join(rng.choice(list(characters), size=chars_per_image)) if by_font else classes[c]
                images.append(_render(text, font, rng))
                labels.append(c)
        splits.append(_dataset(np.stack(images), np.array(labels), classes, name))
    return SkillTask(name, "matplotlib_fonts", DatasetSplits(*splits))


def _patch_task(name: str, sources: dict[str, str], size: str, rng) -> SkillTask:
    """Patches of each named scikit-image picture: training ones from its top 70 %, test ones below."""
    import skimage.data
    import torch.nn.functional as F

    n_train, n_test = PER_CLASS[size]
    parts = {False: ([], []), True: ([], [])}
    for c, attr in enumerate(sources.values()):
        img = np.asarray(getattr(skimage.data, attr)())
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None]
        scale = PATCH_SOURCE_SIDE / min(x.shape[-2:])
        if scale < 1:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
        x = x[0].round().clamp(0, 255).to(torch.uint8).numpy()
        h, w = x.shape[1:]
        cut = int(h * TRAIN_SHARE)
        for test, n, (lo, hi) in ((False, n_train, (0, cut - PATCH_SIDE)), (True, n_test, (cut, h - PATCH_SIDE))):
            if hi < lo:
                raise DataError(f"skill_mini: {attr} is too small to cut {PATCH_SIDE}-px test patches")
            for _ in range(n):
                top, left = int(rng.integers(lo, hi + 1)), int(rng.integers(0, w - PATCH_SIDE + 1))
                parts[test][0].append(x[:, top:top + PATCH_SIDE, left:left + PATCH_SIDE])
                parts[test][1].append(c)
    splits = [_dataset(np.stack(parts[t][0]), np.array(parts[t][1]), list(sources), name) for t in (False, True)]
    return SkillTask(name, "skimage_data", DatasetSplits(*splits))


def _sklearn_digits(size: str, rng) -> SkillTask:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    labels = digits.target
    test_idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=int(0.3 * (labels == c).sum()),
                                          replace=False) for c in range(10)])
    train_mask = np.ones(len(labels), bool)
    train_mask[test_idx] = False
    n_train, n_test = PER_CLASS[size]
    tr = _per_class(labels[train_mask], range(10), n_train, rng)
    te = _per_class(labels[test_idx], range(10), n_test, rng)
    names = [str(d) for d in range(10)]
    train = _dataset(images[train_mask][tr], labels[train_mask][tr], names, "uci_digits")
    test = _dataset(images[test_idx][te], labels[test_idx][te], names, "uci_digits")
    return SkillTask("uci_digits", "sklearn_digits", DatasetSplits(train, test))


def _faces(size: str, rng) -> SkillTask:
    import skimage.data

    images = np.asarray(skimage.data.lfw_subset())
    images = (images * 255).round().astype(np.uint8) if images.dtype != np.uint8 else images
    labels = np.repeat([0, 1], 100)  # the first 100 are faces
    order = rng.permutation(200)
    test = np.sort(np.concatenate([order[labels[order] == c][:30] for c in (0, 1)]))
    train = np.setdiff1d(np.arange(200), test)
    n_train, n_test = PER_CLASS[size]
    tr, te = _per_class(labels[train], (0, 1), n_train, rng), _per_class(labels[test], (0, 1), n_test, rng)
    names = ("face", "not a face")
    return SkillTask("faces", "skimage_lfw", DatasetSplits(_dataset(images[train][tr], labels[train][tr], names, "faces"),
                                                           _dataset(images[test][te], labels[test][te], names, "faces")))


# ------------------------------------------------------------------------------------------- build
def build_skill_mini(data_dir: str | os.PathLike | None = None, size: str = "full", seed: int = 0) -> list[SkillTask]:
    """The 13 tasks in their learning order (see the module docstring); ``size`` is ``full`` or ``tiny``.
    Built once per process for each (data folder, size, seed)."""
    return list(_build(None if data_dir is None else str(Path(data_dir).resolve()), size, seed))


@functools.lru_cache(maxsize=4)
def _build(data_dir: str | None, size: str, seed: int) -> tuple[SkillTask, ...]:
    from exmodel.data import load_dataset

    if size not in PER_CLASS:
        raise DataError(f"skill_mini: size must be one of {sorted(PER_CLASS)}, got {size!r}")
    if size == "full" and data_dir is None:
        raise DataError("skill_mini: the full benchmark needs --data-dir with MNIST and Fashion-MNIST "
                        "(the tiny one reads the embedded subsets)")
    rng = np.random.default_rng(seed)
    fonts = _font_files()
    missing = [f for family in FAMILIES.values() for f in family if f not in fonts]
    if missing:
        raise DataError(f"skill_mini: matplotlib's fonts {missing[:3]} are missing (matplotlib >= 3.8 ships them)")
    all_fonts = [fonts[f] for family in FAMILIES.values() for f in family] + [fonts["cmss10"], fonts["cmtt10"], None]
    symbol_fonts = [fonts[f] for name in ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono", "STIX General")
                    for f in FAMILIES[name]] + [None]
    mnist = load_dataset("mnist", None if size == "tiny" else data_dir)
    fashion = load_dataset("fashion_mnist", None if size == "tiny" else data_dir)
    tasks = [
        SkillTask("mnist_0_4", "mnist", _class_subset(mnist, range(5), "mnist_0_4", size, rng)),
        _glyph_task("letters_a_j", LETTERS_A_J, all_fonts, size, rng),
        SkillTask("fashion_a", "fashion_mnist", _class_subset(fashion, FASHION_A, "fashion_a", size, rng)),
        _patch_task("textures", TEXTURES, size, rng),
        _sklearn_digits(size, rng),
        _glyph_task("typefaces", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 
                    [[fonts[f] for f in family] for family in FAMILIES.values()], size, rng,
                    chars_per_image=2, class_names=list(FAMILIES), by_font=True),
        SkillTask("mnist_5_9", "mnist", _class_subset(mnist, range(5, 10), "mnist_5_9", size, rng)),
        _patch_task("photos", PHOTOS, size, rng),
        _glyph_task("letters_k_t", LETTERS_K_T, all_fonts, size, rng),
        SkillTask("fashion_b", "fashion_mnist", _class_subset(fashion, FASHION_B, "fashion_b", size, rng)),
        _faces(size, rng),
        _glyph_task("printed_digits", DIGITS, all_fonts, size, rng),
        _glyph_task("symbols", SYMBOLS, symbol_fonts, size, rng),
    ]
    return tuple(tasks)


def manifest(tasks: list[SkillTask], size: str, seed: int) -> dict:
    """What was built, from what, under which licence, with which package versions."""
    versions = {}
    for pkg in ("numpy", "scikit-learn", "scikit-image", "matplotlib", "pillow", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "name": "skill_mini", "size": size, "seed": seed, "versions": versions,
        "tasks": [{"name": t.name, "source": t.source, "classes": list(t.class_names),
                   "train": len(t.splits.train), "test": len(t.splits.test),
                   "shape": list(t.splits.train.input_shape)} for t in tasks],
        "sources": {k: SOURCES[k] for k in sorted({t.source for t in tasks})},
    }
