"""Readers on small files written here in the genuine formats: idx, CIFAR pickles and archives,
image folders, and the embedded MNIST / Fashion-MNIST subsets."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exmodel.data import embedded
from exmodel.data.catalog import CATALOG
from exmodel.data.archives import extract_archive
from exmodel.data.cifar import read_cifar_dir, safe_load_pickle
from exmodel.data.idx import encode_idx, read_idx, write_idx
from exmodel.data.imagefolder import read_image_folder
from exmodel.data.registry import load_from_catalog
from exmodel.errors import DataError

# ----------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path: Path, dtype: type, name: str) -> None:
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_bytes_match_the_format() -> None:
    # uint8 code 0x08, 2 dims of sizes 2 and 3 (big-endian), then the 6 payload bytes.
    raw = encode_idx(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    assert raw == bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    # int32 payload is big-endian: 258 = 0x00000102.
    assert encode_idx(np.array([258], dtype=np.int32))[-4:] == bytes([0, 0, 1, 2])


def test_idx_gzip_is_deterministic(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    os.utime(tmp_path / "a.gz", (0, 12345))
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert (tmp_path / "a.gz").read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime field is zero


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), "bad idx magic number 01000801"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 7]), "unknown idx element type 0x07"),
        (bytes([0, 0, 8, 2, 0, 0, 0, 1]), r"truncated idx header \(2 dimensions"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 7]), r"idx payload truncated \(header \(3,\) of uint8 needs 3 bytes, found 2\)"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 7, 7]), "idx payload has trailing bytes"),
        (bytes([0, 0]), "not an idx file"),
    ],
)
def test_idx_corruption_is_a_data_error_naming_the_file(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=f"broken-idx1-ubyte: {message}"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"x\.gz: not a valid gzip file"):
        read_idx(path)


def test_idx_gzip_of_truncated_payload(tmp_path: Path) -> None:
    raw = encode_idx(np.zeros((5, 4), dtype=np.uint8))[:-3]
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=r"short\.gz: idx payload truncated .*needs 20 bytes, found 17"):
        read_idx(path)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.gz: file not found"):
        read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------------------- CIFAR


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes the way Python 2 did (BINSTRING), like the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # Files from Python 2 name numpy's old module path.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_images(n: int, offset: int) -> np.ndarray:
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 2, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Write cifar-10-batches-py under ``root``; batch i has ``per_batch`` images, labels i, i+1, ..."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = names or CATALOG["cifar10"].class_names
    written = {}
    for i, fname in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = cifar_images(per_batch, i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        written[fname] = data
        batch = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"f.png"] * per_batch}
        # Alternate between Python-2-style and Python-3 protocol-2 pickles (the latter uses _codecs.encode).
        (d / fname).write_bytes(py2_pickle(batch) if i % 2 == 0 else pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch}
    (d / "batches.meta").write_bytes(py2_pickle(meta))
    return written


def test_cifar10_batches_are_read_in_order(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    arrays = read_cifar_dir(tmp_path / "cifar-10-batches-py", "cifar10")
    assert arrays.class_names[:3] == ("airplane", "automobile", "bird")
    assert arrays.train_images.shape == (10, 3, 32, 32) and arrays.test_images.shape == (2, 3, 32, 32)
    # Labels of batch i are i, i+1: batches 1..5 then test.
    assert arrays.train_labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert arrays.test_labels.tolist() == [5, 6]
    assert arrays.train_labels.dtype == np.int64
    # Row layout: first 1024 values are the red plane, row-major, so pixel (row 1, col 2) of red is 34.
    first = written["data_batch_1"][0]
    assert arrays.train_images[0, 0, 1, 2] == first[34]
    assert arrays.train_images[0, 2, 0, 0] == first[2048]  # blue plane starts at 2 * 1024
    np.testing.assert_array_equal(arrays.test_images[1].reshape(-1), written["test_batch"][1])


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        batch = {b"data": cifar_images(n, n), b"fine_labels": [99, 0, 42][:n], b"coarse_labels": [1] * n}
        (d / split).write_bytes(py2_pickle(batch))
    names = CATALOG["cifar100"].class_names
    (d / "meta").write_bytes(py2_pickle({b"fine_label_names": [s.encode() for s in names], b"coarse_label_names": []}))
    arrays = read_cifar_dir(d, "cifar100")
    assert arrays.train_labels.tolist() == [99, 0, 42] and arrays.test_labels.tolist() == [99, 0]
    assert arrays.class_names[99] == "worm" and len(arrays.class_names) == 100


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_rejected_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refusing to load pickle that references (posix|nt)\.system"):
        safe_load_pickle(path)
    assert not marker.exists()


def test_pickle_with_builtins_eval_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # protocol 0: eval('1+1')
    with pytest.raises(DataError, match="refusing to load pickle that references builtins.eval"):
        safe_load_pickle(path)


def test_corrupt_and_malformed_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    (d / "data_batch_3").write_bytes(b"\x80\x02}q\x00")  # dict opened, never finished
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR pickle"):
        read_cifar_dir(d, "cifar10")
    (d / "data_batch_3").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be a uint8 array of shape \(N, 3072\)"):
        read_cifar_dir(d, "cifar10")
    (d / "data_batch_3").write_bytes(py2_pickle({b"data": cifar_images(2, 0), b"labels": [0]}))
    with pytest.raises(DataError, match=r"'labels' has shape \(1,\), expected \(2,\)"):
        read_cifar_dir(d, "cifar10")
    (d / "data_batch_3").write_bytes(py2_pickle({b"data": cifar_images(2, 0), b"labels": [0, 10]}))
    with pytest.raises(DataError, match="label 10 out of range for 10 classes"):
        read_cifar_dir(d, "cifar10")
    (d / "test_batch").unlink()
    with pytest.raises(DataError, match="incomplete cifar10 directory, missing test_batch"):
        read_cifar_dir(d, "cifar10")


def make_tar(path: Path, members: dict[str, bytes], symlink: str | None = None) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bad", ["../escape.txt", "/abs.txt", "cifar-10-batches-py/../../x"])
def test_archive_with_unsafe_member_is_rejected(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    make_tar(archive, {"cifar-10-batches-py/ok": b"1", bad: b"2"})
    out = tmp_path / "data"
    with pytest.raises(DataError, match="refusing unsafe archive member"):
        extract_archive(archive, out, "cifar-10-batches-py")
    assert not (tmp_path / "escape.txt").exists() and not (out / "cifar-10-batches-py").exists()


def test_archive_with_symlink_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar.gz"
    make_tar(archive, {"cifar-10-batches-py/ok": b"1"}, symlink="cifar-10-batches-py/link")
    with pytest.raises(DataError, match="only files and directories allowed"):
        extract_archive(archive, tmp_path / "data", "cifar-10-batches-py")


def test_cifar_archive_verified_extracted_and_loaded(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_cifar10(src)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "cifar-10-python.tar.gz"
    batch_dir = src / "cifar-10-batches-py"
    md5 = make_tar(archive, {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(batch_dir.iterdir())})
    info = CATALOG["cifar10"]
    remote = dataclasses.replace(info.files[0], md5=md5)

    bad = dataclasses.replace(info, files=(dataclasses.replace(remote, md5="0" * 32),))
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: checksum mismatch"):
        load_from_catalog(bad, data_dir)
    assert not (data_dir / "cifar-10-batches-py").exists()  # nothing extracted from a bad archive

    splits = load_from_catalog(dataclasses.replace(info, files=(remote,)), data_dir)
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert splits.train.images.shape == (10, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert splits.test.labels.tolist() == [5, 6]
    assert splits.train.mean == (0.4914, 0.4822, 0.4465) and splits.train.name == "cifar10"


def test_cifar_meta_must_list_the_official_classes(tmp_path: Path) -> None:
    write_cifar10(tmp_path, names=tuple(f"c{i}" for i in range(10)))
    with pytest.raises(DataError, match="class names in the meta file"):
        load_from_catalog(CATALOG["cifar10"], tmp_path)


# ---------------------------------------------------------------------------------- image folder


def save(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)  # size is (W, H) for Pillow


def test_image_folder_classes_sorted_and_pixels_kept(tmp_path: Path) -> None:
    save(tmp_path / "zebra" / "a.png", (10, 20, 30))
    save(tmp_path / "apple" / "b.PNG", (200, 100, 0))
    save(tmp_path / "apple" / "c.bmp", (0, 0, 255))
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    ds = read_image_folder(tmp_path)
    assert ds.class_names == ("apple", "zebra")
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.images.shape == (3, 3, 3, 4)  # (N, C, H, W)
    assert ds.images[0, :, 0, 0].tolist() == [200, 100, 0] and ds.images[2, :, 2, 3].tolist() == [10, 20, 30]
    # Mean of the red channel: (200 + 0 + 10) / 3 / 255.
    assert ds.mean[0] == pytest.approx(round(70 / 255, 4))


def test_image_folder_grayscale_and_resize(tmp_path: Path) -> None:
    save(tmp_path / "a" / "x.jpg", (255, 255, 255), size=(10, 6))
    save(tmp_path / "b" / "y.png", (0, 0, 0), size=(5, 5))
    ds = read_image_folder(tmp_path, size=(8, 4), grayscale=True)
    assert ds.images.shape == (2, 1, 8, 4)
    assert ds.images[0].min() >= 250 and ds.images[1].max() == 0  # jpeg may shift white slightly


def test_image_folder_channels_follow_the_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("L", (4, 3), 77).save(tmp_path / "a" / "g.png")
    gray = read_image_folder(tmp_path)
    assert gray.images.shape == (1, 1, 3, 4) and gray.images.unique().tolist() == [77]
    save(tmp_path / "a" / "h.png", (10, 20, 30), size=(4, 3))  # one colour image: all become RGB
    mixed = read_image_folder(tmp_path)
    assert mixed.images.shape == (2, 3, 3, 4)
    assert mixed.images[0, :, 0, 0].tolist() == [77, 77, 77] and mixed.images[1, :, 0, 0].tolist() == [10, 20, 30]
    assert read_image_folder(tmp_path, grayscale=False).images.shape == (2, 3, 3, 4)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path)
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="cats: class folder has no images"):
        read_image_folder(tmp_path)
    save(tmp_path / "cats" / "a.png", (1, 2, 3))
    save(tmp_path / "cats" / "b.png", (1, 2, 3), size=(5, 5))
    with pytest.raises(DataError, match="b.png: image is 5x5 but .*a.png is 3x4; pass a size"):
        read_image_folder(tmp_path)
    (tmp_path / "cats" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cats/b\.png: unreadable image"):
        read_image_folder(tmp_path)


# ------------------------------------------------------------------------------------- embedded


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_embedded_subsets_are_class_balanced(name: str) -> None:
    splits = embedded.load_embedded(name)
    assert splits.train.images.shape == (12000, 1, 28, 28) and splits.test.images.shape == (2000, 1, 28, 28)
    assert torch.bincount(splits.train.labels).tolist() == [1200] * 10
    assert torch.bincount(splits.test.labels).tolist() == [200] * 10
    assert splits.train.class_names == CATALOG[name].class_names and splits.train.std == CATALOG[name].std
    manifest = embedded.embedded_manifest()
    assert manifest["seed"] == 0 and manifest["datasets"][name]["splits"]["train"]["count"] == 12000
    # The images are real digits/clothes, not blank: mean intensity close to the published mean.
    assert abs(splits.train.float_images().mean().item() - CATALOG[name].mean[0]) < 0.02


def test_embedded_files_match_manifest_and_tampering_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = embedded.embedded_manifest()
    root = Path(embedded.__file__).parent / "embedded"
    total = 0
    for fname, sha in manifest["files"].items():
        data = (root / fname).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == sha
    assert total < 10_000_000  # the package stays small
    tampered = {**manifest, "files": {**manifest["files"], "mnist-t10k-labels-idx1-ubyte.gz": "ab" * 32}}
    monkeypatch.setattr(embedded, "embedded_manifest", lambda: tampered)
    with pytest.raises(DataError, match="mnist-t10k-labels-idx1-ubyte.gz: checksum mismatch .*reinstall exmodel"):
        embedded.load_embedded("mnist")


def test_only_mnist_like_datasets_are_embedded() -> None:
    with pytest.raises(DataError, match="'cifar10' is not embedded .*--data-dir"):
        embedded.load_embedded("cifar10")
