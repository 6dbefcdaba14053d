"""The table of datasets exmodel knows by name, and checksum verification of their files.

Each entry records where the files live under a data directory, their published md5 checksums,
the canonical download URL, the class names and the per-channel mean/std of the training split in
[0, 1] units (the default input normalization of experts trained on it).

Every known file is checked against its checksum before it is read. Hashing the 26 MB
Fashion-MNIST archive takes a noticeable fraction of a second, and runs load the same files many
times, so a successful verification is remembered per process, keyed on (path, size, mtime): a file
rewritten in place gets a new mtime and is checked again.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exmodel.errors import DataError
from exmodel.fileio import file_digest

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # mirror of yann.lecun.com/exdb/mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its path relative to the data dir, md5 and download URL."""

    relpath: str
    md5: str
    url: str


@dataclass(frozen=True)
class DatasetInfo:
    """Catalog entry. ``files`` are the files to fetch and verify; ``format`` picks the reader.

    For idx datasets ``files`` are (train images, train labels, test images, test labels); for CIFAR
    it is the single official archive, extracted beside itself into ``extracted_dir``.
    """

    name: str
    format: Literal["idx", "cifar10", "cifar100", "core50"]
    files: tuple[RemoteFile, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extracted_dir: str = ""
    licence: str = ""


def _idx_files(subdir: str, base_url: str, md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    return tuple(RemoteFile(f"{subdir}/{n}", md5, base_url + n) for n, md5 in zip(names, md5s, strict=True))


_CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()
)
assert len(_CIFAR100_CLASSES) == 100

CATALOG: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        format="idx",
        files=_idx_files(
            "mnist",
            MNIST_URL,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
        class_names=tuple(str(d) for d in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        licence="CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher J.C. Burges)",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        format="idx",
        files=_idx_files(
            "fashion-mnist",
            FASHION_MNIST_URL,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=(0.2860,),
        std=(0.3530,),
        licence="MIT (Zalando Research; Xiao, Rasul, Vollgraf 2017)",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        format="cifar10",
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", CIFAR_URL + "cifar-10-python.tar.gz"
            ),
        ),
        extracted_dir="cifar-10-batches-py",
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        licence="see https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        format="cifar100",
        files=(
            RemoteFile(
                "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", CIFAR_URL + "cifar-100-python.tar.gz"
            ),
        ),
        extracted_dir="cifar-100-python",
        class_names=_CIFAR100_CLASSES,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        licence="see https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)",
    ),
    # CORe50 128x128 release; layout, protocols and normalization in exmodel.data.core50. The md5 is the
    # one avalanche (ContinualAI) and several other public CORe50 loaders record for this archive.
    "core50": DatasetInfo(
        name="core50",
        format="core50",
        files=(
            RemoteFile(
                "core50_128x128.zip",
                "745f3373fed08d69343f1058ee559e13",
                "http://bias.csr.unibo.it/maltoni/download/core50/core50_128x128.zip",
            ),
        ),
        extracted_dir="core50_128x128",
        class_names=tuple(f"o{i}" for i in range(1, 51)),  # the 50 objects; 5 per category, see core50.py
        mean=(0.485, 0.456, 0.406),  # ImageNet statistics, not computed on CORe50
        std=(0.229, 0.224, 0.225),
        licence="see https://vlomonaco.github.io/core50/ (Lomonaco & Maltoni 2017)",
    ),
}


def get_info(name: str) -> DatasetInfo:
    """Look a dataset up by name (``fashion-mnist`` and ``fashion_mnist`` are the same)."""
    key = name.strip().lower().replace("-", "_")
    if key not in CATALOG:
        known = ", ".join(CATALOG)
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}, or imagefolder:<path>")
    return CATALOG[key]


# (resolved path, size, mtime_ns, expected md5) of files that already passed verification.
_VERIFIED: set[tuple[str, int, int, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def verify_md5(path: str | os.PathLike, md5: str, display: str | None = None) -> None:
    """Raise :class:`DataError` unless ``path`` has md5 ``md5``; ``display`` names the file in errors."""
    path = Path(path)
    display = display or str(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise DataError(f"{display}: file not found ({path})") from exc
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, md5.lower())
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return
    try:
        actual = file_digest(path, "md5")
    except OSError as exc:
        raise DataError(f"{display}: cannot read file ({exc})") from exc
    if actual != md5.lower():
        raise DataError(
            f"{display}: checksum mismatch (md5 expected {md5.lower()}, got {actual}); "
            "the file is corrupted — delete it or re-download"
        )
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)


def clear_verification_cache() -> None:
    """Forget all successful verifications (tests; or after replacing files within one mtime tick)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()
