"""The in-memory dataset every reader returns.

Images are kept as ``uint8`` tensors of shape ``(N, C, H, W)``; models receive them as floats in
[0, 1] (see :meth:`ImageDataset.float_images`) and each expert applies its own normalization.

``groups`` optionally tags every sample with an integer group (CORe50: its recording session); the
New Instances builder can split a stream along it (``scenario.ni_split: groups``). Subsets keep it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ImageDataset:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    class_names: tuple[str, ...]
    name: str = ""
    # Per-channel mean/std of the training split in [0, 1] units; used as the default normalization.
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.5,))
    groups: torch.Tensor | None = None  # int64 (N,), e.g. the CORe50 session of each image; None = ungrouped

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError("labels must be 1-D with one label per image")
        if self.groups is not None and (self.groups.dtype != torch.int64 or self.groups.shape != self.labels.shape):
            raise ValueError(f"groups must be int64 with one entry per image, got {self.groups.dtype} "
                             f"{tuple(self.groups.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> "ImageDataset":
        groups = None if self.groups is None else self.groups[index]
        return ImageDataset(self.images[index], self.labels[index], self.class_names, self.name, self.mean, self.std,
                            groups)

    def float_images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        x = self.images if index is None else self.images[index]
        return x.float().div_(255.0)


@dataclass(frozen=True)
class DatasetSplits:
    train: ImageDataset
    test: ImageDataset
