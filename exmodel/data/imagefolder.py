"""Your own images as a dataset: one sub-folder per class.

Layout::

    root/<class_name>/<anything>.png|.jpg|.jpeg|.bmp

Classes are the sub-folder names sorted alphabetically (label 0 is the first). Files with other
extensions and hidden entries are ignored. Images are decoded with Pillow, converted to RGB (or to
single-channel ``L`` with ``grayscale=True``) and optionally resized; without ``size`` all images must
already share one size. By default (``grayscale=None``) a folder whose images are all single-band
(greyscale PNGs, as MNIST-like data usually comes) gives one channel, any other gives RGB. Mean/std are computed from the images themselves and serve as the default
normalization.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exmodel.data.types import ImageDataset
from exmodel.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (expected root/<class_name>/*.png|jpg|jpeg|bmp)")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not dirs:
        raise DataError(f"{root}: no class sub-folders (expected root/<class_name>/*.png|jpg|jpeg|bmp)")
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p for p in class_dir.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
    )


GRAY_MODES = frozenset({"1", "L", "I", "I;16", "F"})  # Pillow's single-band modes


def _load_image(path: Path, size: tuple[int, int] | None, grayscale: bool | None) -> np.ndarray:
    """``(C, H, W)`` uint8; ``grayscale=None`` keeps single-band images at one channel."""
    try:
        with Image.open(path) as im:
            gray = im.mode in GRAY_MODES if grayscale is None else grayscale
            im = im.convert("L" if gray else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL sizes are (W, H)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # -> (C, H, W)


def _normalize_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise DataError(f"image size must be positive, got {size}")
    return int(h), int(w)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images ``(N, C, H, W)`` in [0, 1] units."""
    x = images.to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def read_image_folder(
    root: str | os.PathLike,
    size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
    class_names: tuple[str, ...] | None = None,
    name: str | None = None,
) -> ImageDataset:
    """Read ``root/<class_name>/*`` into an :class:`ImageDataset`.

    ``size`` is an int (square) or ``(height, width)``. ``class_names`` fixes the label order (e.g.
    the test split reuses the train split's classes); every sub-folder must then be one of them.
    """
    root = Path(root)
    hw = _normalize_size(size)
    dirs = _class_dirs(root)
    if class_names is None:
        class_names = tuple(d.name for d in dirs)
    else:
        unknown = [d.name for d in dirs if d.name not in class_names]
        if unknown:
            raise DataError(f"{root}: class folder(s) {', '.join(unknown)} not among the classes {list(class_names)}")
    label_of = {c: i for i, c in enumerate(class_names)}

    images: list[np.ndarray] = []
    labels: list[int] = []
    first: Path | None = None
    for d in dirs:
        files = _image_files(d)
        if not files:
            raise DataError(f"{d}: class folder has no images (.png, .jpg, .jpeg or .bmp)")
        for f in files:
            arr = _load_image(f, hw, grayscale)
            if images and arr.shape[1:] != images[0].shape[1:]:
                raise DataError(
                    f"{f}: image is {arr.shape[1]}x{arr.shape[2]} but {first} is "
                    f"{images[0].shape[1]}x{images[0].shape[2]}; pass a size to resize them all"
                )
            first = first or f
            images.append(arr)
            labels.append(label_of[d.name])

    if grayscale is None and len({a.shape[0] for a in images}) > 1:  # some colour: all RGB, as Pillow converts
        images = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in images]
    x = torch.from_numpy(np.stack(images))
    y = torch.tensor(labels, dtype=torch.int64)
    mean, std = channel_stats(x)
    return ImageDataset(x, y, tuple(class_names), name or root.name, mean, std)
