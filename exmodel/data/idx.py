"""Reading and writing the idx format used by MNIST and Fashion-MNIST.

An idx file is a 4-byte magic number followed by the dimensions and a raw big-endian payload:

* bytes 0-1: always zero;
* byte 2: element type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
  0x0E float64);
* byte 3: number of dimensions ``ndim``;
* then ``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` elements.

Files are read whole (the largest, Fashion-MNIST train images, is 47 MB uncompressed), gzip when the
name ends in ``.gz``. Every inconsistency between header and payload is a :class:`DataError` naming the
file, so a truncated download never turns into silently misaligned images.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np

from exmodel.errors import DataError
from exmodel.fileio import atomic_write_bytes

# Element type code -> big-endian numpy dtype, as defined by the idx format.
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_HEADER_BYTES = 4  # two zero bytes, type code, ndim
_DIM_BYTES = 4  # each dimension is a big-endian uint32


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode idx bytes into a native-endian, writable numpy array; ``source`` names it in errors."""
    if len(data) < _HEADER_BYTES:
        raise DataError(f"{source}: not an idx file (only {len(data)} bytes, the header alone needs 4)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{source}: bad idx magic number {data[:4].hex()} (expected it to start with 0000)")
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
        raise DataError(f"{source}: unknown idx element type 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise DataError(f"{source}: idx header declares 0 dimensions")
    dims_end = _HEADER_BYTES + _DIM_BYTES * ndim
    if len(data) < dims_end:
        raise DataError(f"{source}: truncated idx header ({ndim} dimensions declared, file is {len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=_HEADER_BYTES))
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - dims_end
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{source}: idx payload {what} (header {dims} of {dtype.name} needs {expected} bytes, found {actual})"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=dims_end)
    # astype to the native byte order also gives a writable copy (frombuffer over bytes is read-only).
    return flat.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (gzip if the name ends in ``.gz``) into a native-endian numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as raw (uncompressed) idx bytes."""
    array = np.asarray(array)
    for code, dtype in _CODE_TO_DTYPE.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            break
    else:
        raise ValueError(f"idx cannot store dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"idx needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def gzip_deterministic(data: bytes) -> bytes:
    """Gzip with mtime 0 and no embedded file name, so equal input gives byte-identical output."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an idx file atomically; gzip (deterministic) when the name ends in ``.gz``."""
    path = Path(path)
    data = encode_idx(array)
    if path.name.endswith(".gz"):
        data = gzip_deterministic(data)
    return atomic_write_bytes(path, data)


def idx_image_pair(
    images: np.ndarray, labels: np.ndarray, num_classes: int, source: str
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Check an (images, labels) idx pair and return tensors ``uint8 (N, 1, H, W)`` and ``int64 (N,)``.

    ``source`` names the files in errors. MNIST-style images are 3-D ``uint8`` (N, H, W); labels are
    1-D with one entry per image, each in ``[0, num_classes)``.
    """
    import torch  # local: keeps the format functions above importable without torch

    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{source}: images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: {len(labels)} labels for {len(images)} images (shape {labels.shape})")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{source}: labels span {int(labels.min())}..{int(labels.max())}, expected 0..{num_classes - 1}"
        )
    return torch.from_numpy(images[:, None]), torch.from_numpy(labels.astype(np.int64))
