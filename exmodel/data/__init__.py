"""Datasets: the built-in catalog (MNIST, Fashion-MNIST, CIFAR-10/100), your own image folders, and
the small embedded MNIST / Fashion-MNIST subsets used when no data directory is given.

Start with :func:`load_dataset`; :mod:`exmodel.data.registry` explains where data comes from.
"""

from exmodel.data.registry import list_datasets, load_dataset, resolve_data_dir
from exmodel.data.types import DatasetSplits, ImageDataset

__all__ = ["DatasetSplits", "ImageDataset", "list_datasets", "load_dataset", "resolve_data_dir"]
