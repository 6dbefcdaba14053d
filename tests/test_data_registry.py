"""Dataset resolution: data dir precedence, embedded defaults, missing and corrupted files, checksum
caching, the in-process dataset cache, image folders, and (when present) the full MNIST files."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import exmodel.data.catalog as catalog
import exmodel.data.registry as registry
from exmodel.data import list_datasets, load_dataset, resolve_data_dir
from exmodel.data.idx import write_idx
from exmodel.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    registry.clear_cache()
    catalog.clear_verification_cache()
    yield
    registry.clear_cache()
    catalog.clear_verification_cache()


def write_small_mnist(data_dir: Path) -> dict[str, str]:
    """Write 4 tiny idx files under the MNIST names; returns their md5 by relpath."""
    arrays = {
        "train-images-idx3-ubyte.gz": np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8),
        "train-labels-idx1-ubyte.gz": np.array([7, 0, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": np.full((1, 28, 28), 255, dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([3], dtype=np.uint8),
    }
    md5s = {}
    for name, array in arrays.items():
        path = write_idx(data_dir / "mnist" / name, array)
        md5s[f"mnist/{name}"] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5s


def use_md5s(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Point the catalog's MNIST checksums at the small files written by the test."""
    info = catalog.CATALOG["mnist"]
    files = tuple(dataclasses.replace(f, md5=md5s[f.relpath]) for f in info.files)
    monkeypatch.setitem(catalog.CATALOG, "mnist", dataclasses.replace(info, files=files))


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("EXMODEL_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins over the env
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="data dir is not a directory"):
        resolve_data_dir(tmp_path / "file")


def test_list_datasets() -> None:
    assert list_datasets() == ["mnist", "fashion_mnist", "cifar10", "cifar100", "core50", "glyphs"]


def test_catalog_constants_match_shared_md5sums() -> None:
    # The checksum table in ../shared/data/MD5SUMS uses the same relative paths as the catalog.
    expected = {f.relpath: f.md5 for name in ("mnist", "fashion_mnist") for f in catalog.CATALOG[name].files}
    if (SHARED_DATA / "MD5SUMS").is_file():
        listed = dict(line.split()[::-1] for line in (SHARED_DATA / "MD5SUMS").read_text().splitlines() if line)
        assert listed == expected
    assert catalog.CATALOG["cifar10"].files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert catalog.CATALOG["cifar100"].files[0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert catalog.CATALOG["fashion_mnist"].mean == (0.2860,) and catalog.CATALOG["cifar100"].std[2] == 0.2762


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'svhn'; known datasets: mnist, fashion_mnist"):
        load_dataset("svhn")


def test_no_data_dir_uses_embedded_and_is_cached() -> None:
    first = load_dataset("mnist")
    assert len(first.train) == 12000 and first.train.mean == (0.1307,)
    assert load_dataset("MNIST") is first  # same resolved arguments -> the cached object
    assert load_dataset("fashion-mnist").train.class_names[0] == "T-shirt/top"


def test_no_data_dir_for_cifar_says_how_to_get_it() -> None:
    with pytest.raises(DataError, match="'cifar100' is not embedded; pass --data-dir or set EXMODEL_DATA_DIR"):
        load_dataset("cifar100")


def test_missing_files_are_listed(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=f"mnist: missing {tmp_path}/mnist/train-images-idx3-ubyte.gz, .*t10k-labels-idx1-ubyte.gz; "
        "download from https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
    ):
        load_dataset("mnist", tmp_path)


def test_checksum_mismatch_with_real_catalog(tmp_path: Path) -> None:
    write_small_mnist(tmp_path)  # right names, wrong content for the published checksums
    with pytest.raises(
        DataError,
        match=r"mnist/train-images-idx3-ubyte\.gz: checksum mismatch \(md5 expected f68b3c2dcbeaaa9fbdd348bbdeb94873, "
        r"got [0-9a-f]{32}\); the file is corrupted — delete it or re-download",
    ):
        load_dataset("mnist", tmp_path)


def test_data_dir_from_env_loads_verified_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_md5s(monkeypatch, write_small_mnist(tmp_path))
    monkeypatch.setenv("EXMODEL_DATA_DIR", str(tmp_path))
    splits = load_dataset("mnist")
    assert splits.train.labels.tolist() == [7, 0, 9] and splits.test.labels.tolist() == [3]
    assert splits.train.images.shape == (3, 1, 28, 28)
    assert splits.train.images[1, 0, 0, :3].tolist() == [16, 17, 18]  # 784 % 256 = 16, from np.arange
    assert splits.test.float_images().min().item() == 1.0


def test_verification_is_cached_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5s = write_small_mnist(tmp_path)
    use_md5s(monkeypatch, md5s)
    calls: list[str] = []
    real_digest = catalog.file_digest

    def counting_digest(path: Path, algorithm: str = "sha256") -> str:
        calls.append(Path(path).name)
        return real_digest(path, algorithm)

    monkeypatch.setattr(catalog, "file_digest", counting_digest)
    registry.load_from_catalog(catalog.CATALOG["mnist"], tmp_path)
    registry.load_from_catalog(catalog.CATALOG["mnist"], tmp_path)
    assert len(calls) == 4  # each file hashed once despite two loads

    # Corrupt one file in place (new size and mtime): it is verified again and rejected.
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.array([4, 4], dtype=np.uint8))
    with pytest.raises(DataError, match="mnist/t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        registry.load_from_catalog(catalog.CATALOG["mnist"], tmp_path)
    assert calls.count("t10k-labels-idx1-ubyte.gz") == 2


def test_labels_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5s = write_small_mnist(tmp_path)
    path = write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.array([1, 10, 2], dtype=np.uint8))
    md5s["mnist/train-labels-idx1-ubyte.gz"] = hashlib.md5(path.read_bytes()).hexdigest()
    use_md5s(monkeypatch, md5s)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: labels span 1\.\.10, expected 0\.\.9"):
        load_dataset("mnist", tmp_path)


def test_image_folder_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for split, classes in (("train", ("b", "a")), ("test", ("b",))):
        for i, c in enumerate(classes):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            Image.new("L", (5, 5), 50 * (i + 1)).save(tmp_path / "imgs" / split / c / "0.png")
    monkeypatch.chdir(tmp_path)
    splits = load_dataset("imagefolder:imgs")
    assert splits.train.class_names == ("a", "b") and splits.train.labels.tolist() == [0, 1]
    assert splits.test.labels.tolist() == [1]  # "b" keeps the train label even though test lacks "a"
    assert splits.test.mean == splits.train.mean and splits.train.images.shape == (2, 1, 5, 5)  # greyscale stays
    assert load_dataset(f"imagefolder:{tmp_path / 'imgs'}") is splits  # same folder, same cache entry
    shutil.rmtree(tmp_path / "imgs" / "test")
    registry.clear_cache()
    with pytest.raises(DataError, match=r"needs train/ and test/ sub-folders \(test/ is missing\)"):
        load_dataset("imagefolder:imgs")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="full MNIST not available beside the repo")
def test_full_mnist_from_shared_data() -> None:
    splits = load_dataset("mnist", SHARED_DATA)
    assert splits.train.images.shape == (60000, 1, 28, 28) and splits.test.images.shape == (10000, 1, 28, 28)
    # Published class counts of the MNIST training set (digits 0..9).
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(splits.train.labels.numpy()).tolist() == counts
