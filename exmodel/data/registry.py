"""Loading a dataset by name: where it comes from and what happens when it is missing.

Resolution order for the data directory: the explicit ``data_dir`` argument (``--data-dir``), else
the ``EXMODEL_DATA_DIR`` environment variable, else none.

* No data directory: ``mnist`` and ``fashion_mnist`` come from the subsets embedded in the package;
  any other dataset is an error telling how to point exmodel at the full files.
* A data directory: the full dataset is read from it (layout in :mod:`exmodel.data.catalog`), every
  file verified against its published md5 first. Missing files are downloaded from the catalog URL
  when ``download=True``, otherwise the error lists the missing path and where to get it.
* ``imagefolder:<path>``: ``<path>/train`` and ``<path>/test`` read by
  :func:`~exmodel.data.imagefolder.read_image_folder`.
* ``glyphs``: printed characters drawn on the fly from a seed (:mod:`exmodel.data.glyphs`), an
  auxiliary pool of strokes that needs no files.

Runs load the same data many times (one experience after another, evaluation, synthesis), so loaded
datasets are cached in-process on the resolved arguments. The returned tensors are shared between
callers and must not be modified in place.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from exmodel.data.catalog import CATALOG, DatasetInfo, get_info, verify_md5
from exmodel.data.archives import extract_archive
from exmodel.data.cifar import read_cifar_dir, required_files
from exmodel.data.core50 import load_core50_splits
from exmodel.data.download import download as download_file
from exmodel.data.embedded import EMBEDDED_DATASETS, load_embedded
from exmodel.data.glyphs import NAME as GLYPHS
from exmodel.data.glyphs import load_glyphs
from exmodel.data.idx import idx_image_pair, read_idx
from exmodel.data.imagefolder import read_image_folder
from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import DataError

ENV_VAR = "EXMODEL_DATA_DIR"
IMAGEFOLDER_PREFIX = "imagefolder:"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The explicit ``data_dir``, else ``$EXMODEL_DATA_DIR``, else ``None`` (embedded data)."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: data dir is not a directory")
    return path


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (plus ``imagefolder:<path>``)."""
    return [*CATALOG, GLYPHS]


def _missing_hint(info: DatasetInfo, data_dir: Path) -> str:
    urls = ", ".join(f.url for f in info.files)
    return f"download from {urls} into {data_dir}, or enable downloading (download=True / --download)"


def _ensure_files(info: DatasetInfo, data_dir: Path, download: bool) -> list[Path]:
    """Return the paths of ``info.files`` under ``data_dir``, downloading missing ones if allowed."""
    paths = [data_dir / f.relpath for f in info.files]
    missing = [(f, p) for f, p in zip(info.files, paths, strict=True) if not p.is_file()]
    if missing and not download:
        listed = ", ".join(str(p) for _, p in missing)
        raise DataError(f"{info.name}: missing {listed}; {_missing_hint(info, data_dir)}")
    for f, p in missing:
        download_file(f.url, p, f.md5)
    for f, p in zip(info.files, paths, strict=True):
        verify_md5(p, f.md5, f.relpath)
    return paths


def _load_idx(info: DatasetInfo, data_dir: Path, download: bool) -> DatasetSplits:
    train_img, train_lbl, test_img, test_lbl = _ensure_files(info, data_dir, download)
    splits = []
    for img_path, lbl_path in ((train_img, train_lbl), (test_img, test_lbl)):
        x, y = idx_image_pair(read_idx(img_path), read_idx(lbl_path), len(info.class_names), str(img_path))
        splits.append(ImageDataset(x, y, info.class_names, info.name, info.mean, info.std))
    return DatasetSplits(*splits)


def _from_arrays(images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> ImageDataset:
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(labels), info.class_names, info.name, info.mean, info.std
    )


def _load_cifar(info: DatasetInfo, data_dir: Path, download: bool) -> DatasetSplits:
    variant = info.format  # "cifar10" or "cifar100"
    extracted = data_dir / info.extracted_dir
    if not all((extracted / n).is_file() for n in required_files(variant)):  # type: ignore[arg-type]
        (archive,) = _ensure_files(info, data_dir, download)
        extract_archive(archive, data_dir, info.extracted_dir)
    arrays = read_cifar_dir(extracted, variant)  # type: ignore[arg-type]
    if arrays.class_names != info.class_names:
        raise DataError(
            f"{extracted}: class names in the meta file {list(arrays.class_names)[:3]}... "
            f"do not match the official {info.name} classes {list(info.class_names)[:3]}..."
        )
    return DatasetSplits(
        _from_arrays(arrays.train_images, arrays.train_labels, info),
        _from_arrays(arrays.test_images, arrays.test_labels, info),
    )


def load_from_catalog(info: DatasetInfo, data_dir: Path, download: bool = False) -> DatasetSplits:
    """Load the dataset described by ``info`` from ``data_dir`` (uncached; any catalog entry works)."""
    if info.format == "idx":
        return _load_idx(info, data_dir, download)
    if info.format == "core50":
        return load_core50_splits(info, data_dir, download)
    return _load_cifar(info, data_dir, download)


def load_image_folder_splits(path: str | os.PathLike) -> DatasetSplits:
    """``<path>/train`` and ``<path>/test``; test uses the train classes and normalization."""
    root = Path(path).expanduser().resolve()
    name = f"{IMAGEFOLDER_PREFIX}{root.name}"
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root}: image folder dataset needs train/ and test/ sub-folders ({split}/ is missing)")
    train = read_image_folder(root / "train", name=name)
    test = read_image_folder(root / "test", grayscale=train.input_shape[0] == 1, class_names=train.class_names,
                             name=name)  # the test images take the train images' channels
    if test.input_shape != train.input_shape:
        raise DataError(f"{root / 'test'}: images are {test.input_shape}, train images are {train.input_shape}")
    test = ImageDataset(test.images, test.labels, train.class_names, name, train.mean, train.std)
    return DatasetSplits(train, test)


@lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: Path | None, download: bool) -> DatasetSplits:
    if name.startswith(IMAGEFOLDER_PREFIX):
        return load_image_folder_splits(name[len(IMAGEFOLDER_PREFIX) :])
    if name == GLYPHS:
        return load_glyphs()
    info = get_info(name)
    if data_dir is None:
        if info.name in EMBEDDED_DATASETS:
            return load_embedded(info.name)
        raise DataError(
            f"dataset {info.name!r} is not embedded; pass --data-dir or set {ENV_VAR} to a directory "
            f"holding (or, with download enabled, to receive) {', '.join(f.relpath for f in info.files)}"
        )
    return load_from_catalog(info, data_dir, download)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> DatasetSplits:
    """Load ``name`` (a catalog name or ``imagefolder:<path>``) as train/test :class:`ImageDataset` s."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        # Resolve the folder now so the cache key does not depend on the working directory.
        folder = Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser().resolve()
        return _load_cached(f"{IMAGEFOLDER_PREFIX}{folder}", None, False)
    if name.strip().lower() == GLYPHS:  # drawn on the fly: no files, the same everywhere
        return _load_cached(GLYPHS, None, False)
    return _load_cached(get_info(name).name, resolve_data_dir(data_dir), download)


def clear_cache() -> None:
    """Drop datasets cached by :func:`load_dataset` (tests, or after changing files on disk)."""
    _load_cached.cache_clear()
