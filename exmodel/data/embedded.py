"""Small real subsets of MNIST and Fashion-MNIST shipped inside the package.

They let every command run out of the box, with no data directory and no network: 1,200 training
images per class (12,000, drawn from the genuine training files) and 200 test images per class
(2,000, from the genuine test files), selected class-balanced with seed 0 by
``scripts/build_embedded.py``. ``embedded/README.md`` documents provenance and licences and
``embedded/MANIFEST.json`` records the sha256 of every shipped file, which is checked on load.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from exmodel.data.catalog import get_info
from exmodel.data.idx import idx_image_pair, parse_idx
from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import DataError
from exmodel.fileio import sha256_bytes

EMBEDDED_DATASETS = ("mnist", "fashion_mnist")
TRAIN_PER_CLASS = 1200
TEST_PER_CLASS = 200
SPLIT_PREFIX = {"train": "train", "test": "t10k"}  # the upstream file names call the test split t10k


def embedded_file_name(dataset: str, split: str, kind: str) -> str:
    """E.g. ``mnist-train-images-idx3-ubyte.gz``; ``kind`` is "images" or "labels"."""
    rank = 3 if kind == "images" else 1
    return f"{dataset}-{SPLIT_PREFIX[split]}-{kind}-idx{rank}-ubyte.gz"


def _read_resource(name: str) -> bytes:
    try:
        return (resources.files("exmodel.data") / "embedded" / name).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"embedded data file {name} is missing from the installed package; reinstall exmodel "
            "or pass --data-dir / set EXMODEL_DATA_DIR"
        ) from exc


@lru_cache(maxsize=1)
def embedded_manifest() -> dict[str, Any]:
    """The parsed ``embedded/MANIFEST.json``."""
    try:
        return json.loads(_read_resource("MANIFEST.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"embedded MANIFEST.json is not valid JSON ({exc}); reinstall exmodel") from exc


def _verified_bytes(name: str) -> bytes:
    expected = embedded_manifest().get("files", {}).get(name)
    if expected is None:
        raise DataError(f"embedded MANIFEST.json has no entry for {name}; reinstall exmodel")
    data = _read_resource(name)
    actual = sha256_bytes(data)
    if actual != expected:
        raise DataError(
            f"embedded data file {name}: checksum mismatch (sha256 expected {expected}, got {actual}); reinstall exmodel"
        )
    return data


def _gunzip(data: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:  # unreachable after a sha256 match, kept for clear errors
        raise DataError(f"embedded data file {name}: not valid gzip ({exc})") from exc


def _split(dataset: str, split: str) -> ImageDataset:
    info = get_info(dataset)
    img_name = embedded_file_name(dataset, split, "images")
    lbl_name = embedded_file_name(dataset, split, "labels")
    images = parse_idx(_gunzip(_verified_bytes(img_name), img_name), f"embedded {img_name}")
    labels = parse_idx(_gunzip(_verified_bytes(lbl_name), lbl_name), f"embedded {lbl_name}")
    x, y = idx_image_pair(images, labels, len(info.class_names), f"embedded {img_name}")
    return ImageDataset(x, y, info.class_names, info.name, info.mean, info.std)


def load_embedded(name: str) -> DatasetSplits:
    """Load the embedded subset of ``mnist`` or ``fashion_mnist`` (sha256-verified)."""
    dataset = get_info(name).name
    if dataset not in EMBEDDED_DATASETS:
        raise DataError(
            f"dataset {name!r} is not embedded (only {', '.join(EMBEDDED_DATASETS)}); "
            "pass --data-dir or set EXMODEL_DATA_DIR"
        )
    return DatasetSplits(train=_split(dataset, "train"), test=_split(dataset, "test"))
