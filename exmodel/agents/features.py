"""The frozen backbone every LLL agent shares, and its features cached on disk.

A :class:`Backbone` turns uint8 images of any size and channel count into feature vectors: grey
images are replicated to RGB, every image is resized to ``side`` px (bilinear, antialiased), mapped
to the backbone's input range and run through ``forward_features`` in eval mode. The default is
EfficientNet-Lite0 with its ImageNet weights; any registered model with ``forward_features`` can be
plugged in (``Backbone(model, name=..., side=...)``), e.g. one trained in-project on another dataset.

:class:`FeatureCache` keeps the features of each image set in one safetensors file under
``ROOT/<backbone id>/<side>px/<dataset>-<content hash>.safetensors``: keyed by the backbone, the
resolution, the dataset's name and a SHA-256 of its pixels, so a changed image set is never served
stale features. Files are written atomically; a damaged one is recomputed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from exmodel.data.types import ImageDataset
from exmodel.fileio import atomic_write_bytes
from exmodel.progress import Progress

DEFAULT_SIDE = 64  # px; features at 64 px cost ~1/12 of those at 224 (measured: 86 vs 5 img/s, 2 threads)


@dataclass
class Backbone:
    model: torch.nn.Module
    name: str  # identifies the weights: part of every cache key
    side: int = DEFAULT_SIDE
    normalize: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    batch_size: int = 128
    channels: int = 3  # what the model takes: grey images are replicated, colour ones averaged to grey

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    @property
    def cache_id(self) -> str:
        return f"{self.name}/{self.side}px"

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W), C in {1, 3} -> the backbone's input (N, channels, side, side)."""
        x = images.float().div(255.0)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.channels == 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.side)
        return self.normalize(x)

    @torch.no_grad()
    def features(self, images: torch.Tensor, progress: Progress | None = None, label: str = "features") -> torch.Tensor:
        """Features (N, num_features) of uint8 images, in batches."""
        out = []
        task = progress.add(f"{label}: {len(images)} images at {self.side} px", -(-len(images) // self.batch_size)) \
            if progress else None
        for i in range(0, len(images), self.batch_size):
            out.append(self.model.forward_features(self.prepare(images[i:i + self.batch_size])).float())
            if task is not None:
                progress.advance(task)
        if task is not None:
            progress.remove(task)
        return torch.cat(out) if out else torch.zeros(0, self.num_features)


def lite0_backbone(side: int = DEFAULT_SIDE, weights: str | os.PathLike | None = None) -> Backbone:
    """EfficientNet-Lite0 with its genuine ImageNet weights (see :mod:`exmodel.models.pretrained`)."""
    from exmodel.models.pretrained import efficientnet_lite0_imagenet, imagenet_lite_normalize, lite0_weights_path

    path = Path(weights) if weights else lite0_weights_path()
    return Backbone(efficientnet_lite0_imagenet(path), f"efficientnet_lite0-imagenet-{path.stem}", side,
                    imagenet_lite_normalize)


def bundle_backbone(path: str | os.PathLike) -> Backbone:
    """The trunk of an exmodel expert bundle (one trained in-project, or imported) as the backbone:
    its ``forward_features``, its input size and channels, its card's normalization. The cache key
    names the bundle by its weights' SHA-256, so retrained weights never share features."""
    from exmodel.errors import BundleError
    from exmodel.experts.bundle import load_bundle

    expert = load_bundle(path)
    net, card = expert.net, expert.card
    if not hasattr(net, "forward_features") or not getattr(net, "num_features", 0):
        raise BundleError(f"{path}: its network ({card.arch}) has no forward_features to serve as a backbone")
    c, h, _ = card.input_shape
    mean = torch.tensor(card.normalization.mean).view(1, c, 1, 1)
    std = torch.tensor(card.normalization.std).view(1, c, 1, 1)
    return Backbone(net, f"bundle-{card.arch}-{card.weights_sha256[:16]}", int(h), lambda x: (x - mean) / std,
                    channels=int(c))


def images_digest(images: torch.Tensor) -> str:
    h = hashlib.sha256(str((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class FeatureCache:
    """Features on disk, one file per (backbone, resolution, image set); ``root=None`` caches nothing."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = self.misses = 0

    def path(self, backbone: Backbone, data: ImageDataset) -> Path | None:
        if self.root is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (data.name or "data"))
        return self.root / backbone.cache_id / f"{safe}-{images_digest(data.images)}.safetensors"

    def features(self, backbone: Backbone, data: ImageDataset, progress: Progress | None = None) -> torch.Tensor:
        path = self.path(backbone, data)
        if path is not None and path.is_file():
            try:
                feats = load_file(path)["features"]
                if feats.shape == (len(data), backbone.num_features) and torch.isfinite(feats).all():
                    self.hits += 1
                    return feats
            except Exception:  # noqa: BLE001  a damaged cache file is recomputed, never trusted
                pass
        self.misses += 1
        feats = backbone.features(data.images, progress, label=data.name or "features")
        if path is not None:
            atomic_write_bytes(path, save({"features": feats.contiguous()}))
        return feats
