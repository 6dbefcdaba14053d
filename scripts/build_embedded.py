"""Build the embedded MNIST / Fashion-MNIST subsets shipped in ``exmodel/data/embedded/``.

Usage::

    python scripts/build_embedded.py --source ../shared/data

``--source`` holds the genuine files in the usual layout (``mnist/train-images-idx3-ubyte.gz``,
``fashion-mnist/...``). Their md5s are checked against the catalog first. For each dataset and split
we draw, with ``numpy.random.default_rng(0)``, a fixed number of images per class without
replacement (1,200 per class from the training files, 200 per class from the test files), keep them
in their original file order, and write deterministic gzip idx files plus ``MANIFEST.json`` (sha256
of every output, md5 of every source, sha256 of the selected indices) and ``README.md``. Running it
twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exmodel.data.catalog import get_info, verify_md5  # noqa: E402
from exmodel.data.embedded import (  # noqa: E402
    EMBEDDED_DATASETS,
    TEST_PER_CLASS,
    TRAIN_PER_CLASS,
    embedded_file_name,
)
from exmodel.data.idx import read_idx, write_idx  # noqa: E402
from exmodel.errors import ExmodelError  # noqa: E402
from exmodel.fileio import atomic_write_json, atomic_write_text, file_digest  # noqa: E402

SEED = 0
OUT_DIR = REPO / "exmodel" / "data" / "embedded"

README = """\
# Embedded datasets

Small, class-balanced subsets of two public datasets, shipped so that exmodel runs with no data
directory and no network. Use `--data-dir` / `EXMODEL_DATA_DIR` with the full files for real
benchmarks.

| files | taken from | images |
| --- | --- | --- |
| `mnist-train-*-ubyte.gz` | MNIST `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz` | 1,200 per class, 12,000 |
| `mnist-t10k-*-ubyte.gz` | MNIST `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz` | 200 per class, 2,000 |
| `fashion_mnist-train-*-ubyte.gz` | Fashion-MNIST `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz` | 1,200 per class, 12,000 |
| `fashion_mnist-t10k-*-ubyte.gz` | Fashion-MNIST `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz` | 200 per class, 2,000 |

## How they were selected

`scripts/build_embedded.py --source <dir with the genuine files>` first checks the md5 of every
source file against the published checksums (recorded in `MANIFEST.json`). For each dataset and
split, a `numpy.random.default_rng(0)` generator picks, class by class (0 to 9), the given number of
images uniformly without replacement; the chosen indices are sorted so images keep their original
order. Train subsets come only from the training files and test subsets only from the test files,
so the two never overlap. Pixels and labels are copied unchanged into idx files compressed with
deterministic gzip (mtime 0). `MANIFEST.json` records the sha256 of every file here (checked each
time the data is loaded) and the sha256 of the selected index arrays (int64, little-endian).

## Licences and credits

- **MNIST**: Yann LeCun, Corinna Cortes and Christopher J.C. Burges, "The MNIST database of
  handwritten digits". Licensed under CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/).
  The files here are a subset of it, unmodified otherwise, and are shared under the same licence.
- **Fashion-MNIST**: Zalando Research; Han Xiao, Kashif Rasul and Roland Vollgraf, "Fashion-MNIST: a
  Novel Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747 (2017).
  MIT licence, Copyright (c) 2017 Zalando SE (https://github.com/zalandoresearch/fashion-mnist).
"""


def select_balanced(labels: np.ndarray, per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` samples of each class, drawn without replacement, in file order."""
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"class {c} has only {len(pool)} samples, need {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def build(source: Path, out_dir: Path) -> dict:
    rng = np.random.default_rng(SEED)
    manifest: dict = {
        "format": 1,
        "seed": SEED,
        "selection": "per class 0..9: rng.choice(indices of class, per_class, replace=False); sorted; "
        "rng = numpy.random.default_rng(seed), shared across datasets in the order listed",
        "datasets": {},
        "files": {},
    }
    for dataset in EMBEDDED_DATASETS:
        info = get_info(dataset)
        source_md5 = {}
        for f in info.files:
            verify_md5(source / f.relpath, f.md5, f.relpath)
            source_md5[f.relpath] = f.md5
        entry: dict = {"source_md5": source_md5, "splits": {}}
        train_img, train_lbl, test_img, test_lbl = (source / f.relpath for f in info.files)
        for split, img_path, lbl_path, per_class in (
            ("train", train_img, train_lbl, TRAIN_PER_CLASS),
            ("test", test_img, test_lbl, TEST_PER_CLASS),
        ):
            images, labels = read_idx(img_path), read_idx(lbl_path)
            idx = select_balanced(labels, per_class, len(info.class_names), rng)
            outputs = {
                "images": (embedded_file_name(dataset, split, "images"), images[idx]),
                "labels": (embedded_file_name(dataset, split, "labels"), labels[idx]),
            }
            for name, array in outputs.values():
                write_idx(out_dir / name, array).chmod(0o644)  # package data: world-readable
                manifest["files"][name] = file_digest(out_dir / name, "sha256")
            entry["splits"][split] = {
                "source_images": img_path.relative_to(source).as_posix(),
                "source_labels": lbl_path.relative_to(source).as_posix(),
                "per_class": per_class,
                "count": int(len(idx)),
                "source_indices_sha256": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest(),
                "images_file": outputs["images"][0],
                "labels_file": outputs["labels"][0],
            }
        manifest["datasets"][dataset] = entry
    atomic_write_json(out_dir / "MANIFEST.json", manifest).chmod(0o644)
    atomic_write_text(out_dir / "README.md", README).chmod(0o644)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="directory with mnist/ and fashion-mnist/")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: the package)")
    args = parser.parse_args()
    try:
        manifest = build(args.source, args.out)
    except ExmodelError as exc:
        raise SystemExit(f"error: {exc}") from None
    total = sum((args.out / n).stat().st_size for n in manifest["files"])
    for name in manifest["files"]:
        print(f"{(args.out / name).stat().st_size:>10,d}  {name}")
    print(f"{total:>10,d}  total bytes in {args.out}")


if __name__ == "__main__":
    main()
