"""CIFAR-10 and CIFAR-100 in their official "python version" layout, read without trusting pickle.

The official batches are Python 2 pickles of dicts holding a ``uint8`` array ``b"data"`` of shape
(N, 3072) (1024 red, then 1024 green, then 1024 blue values of a 32x32 image, row-major) and a list
of labels (``b"labels"`` for CIFAR-10, ``b"fine_labels"`` for CIFAR-100). A pickle can call any
importable function while loading, so a file from the internet must never reach ``pickle.load``:
:class:`SafeUnpickler` only resolves the handful of globals a numpy array needs and rejects
everything else before it can run.

Layouts (under the data dir)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

The official archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) are verified by the
caller and unpacked by :func:`exmodel.data.archives.extract_archive`, which refuses members that could land outside the
target directory and moves the result into place only once everything is extracted.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from exmodel.errors import DataError

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias there
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]

# The only globals a pickled numpy array (as written by numpy 1.x/2.x, Python 2 or 3) refers to.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,  # Python 3 protocol-2 pickles spell bytes this way
}

CIFAR_SIDE = 32
CIFAR_CHANNELS = 3
_ROW = CIFAR_CHANNELS * CIFAR_SIDE * CIFAR_SIDE  # 3072 values per image

Variant = Literal["cifar10", "cifar100"]
_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "labels_key": b"labels",
        "names_key": b"label_names",
    },
    "cifar100": {
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "labels_key": b"fine_labels",
        "names_key": b"fine_label_names",
    },
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy-array globals in ``_ALLOWED``."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")  # the official files were written by Python 2
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to load pickle that references {module}.{name} "
                "(only numpy arrays are allowed in CIFAR files)"
            ) from None


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a CIFAR pickle through :class:`SafeUnpickler`; every failure is a :class:`DataError`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return SafeUnpickler(fh, str(path)).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except Exception as exc:  # corrupt pickles raise many types (UnpicklingError, EOFError, ValueError...)
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc


def _get(d: Any, key: bytes, path: Path) -> Any:
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    # Accept str keys too, in case a file was re-pickled under Python 3.
    if key in d:
        return d[key]
    if key.decode() in d:
        return d[key.decode()]
    raise DataError(f"{path}: missing key {key.decode()!r}")


def read_batch(path: str | os.PathLike, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into images ``uint8 (N, 3, 32, 32)`` and labels ``int64 (N,)``."""
    path = Path(path)
    batch = safe_load_pickle(path)
    data = _get(batch, b"data", path)
    labels = _get(batch, labels_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {_ROW}), got {got}")
    try:
        label_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {labels_key.decode()!r} must be a list of integers") from exc
    if label_arr.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {labels_key.decode()!r} has shape {label_arr.shape}, expected ({data.shape[0]},) to match 'data'"
        )
    images = data.reshape(-1, CIFAR_CHANNELS, CIFAR_SIDE, CIFAR_SIDE).copy()
    return images, label_arr


def read_class_names(path: str | os.PathLike, names_key: bytes) -> tuple[str, ...]:
    path = Path(path)
    names = _get(safe_load_pickle(path), names_key, path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: {names_key.decode()!r} must be a list of strings")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


@dataclass(frozen=True)
class CifarArrays:
    train_images: np.ndarray  # uint8 (N, 3, 32, 32)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def required_files(variant: Variant) -> tuple[str, ...]:
    """File names (inside the extracted directory) a complete copy of ``variant`` has."""
    layout = _LAYOUT[variant]
    return (*layout["train"], *layout["test"], layout["meta"])


def read_cifar_dir(directory: str | os.PathLike, variant: Variant) -> CifarArrays:
    """Read an extracted ``cifar-10-batches-py`` or ``cifar-100-python`` directory."""
    directory = Path(directory)
    layout = _LAYOUT[variant]
    missing = [n for n in required_files(variant) if not (directory / n).is_file()]
    if missing:
        raise DataError(f"{directory}: incomplete {variant} directory, missing {', '.join(missing)}")
    names = read_class_names(directory / layout["meta"], layout["names_key"])

    def read_split(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_batch(directory / f, layout["labels_key"]) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        bad = (labels < 0) | (labels >= len(names))
        if bad.any():
            raise DataError(
                f"{directory}: label {int(labels[bad][0])} out of range for {len(names)} classes in {', '.join(files)}"
            )
        return images, labels

    train_x, train_y = read_split(layout["train"])
    test_x, test_y = read_split(layout["test"])
    return CifarArrays(train_x, train_y, test_x, test_y, names)
