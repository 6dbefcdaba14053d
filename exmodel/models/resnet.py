"""Residual networks for small (CIFAR-sized) images.

``resnet18``: the ImageNet ResNet-18 adapted to 32x32 inputs as is customary for CIFAR — a 3x3
stride-1 stem and no max-pool, then four stages of two BasicBlocks with widths w, 2w, 4w, 8w
(w = ``width`` = 64 by default), strides 1, 2, 2, 2, and global average pooling. A 32x32 input leaves
a 4x4 map before pooling; features = 8w = 512. Shortcuts that change shape are 1x1 conv + BN.

``resnet20`` / ``resnet32``: He et al. (2016), Sec. 4.2 — a 3x3 stem with 16 channels then three
stages of n = 3 / 5 BasicBlocks with 16, 32, 64 channels and strides 1, 2, 2 (depth 6n + 2), global
average pooling; 64 features. ``shortcut="A"`` (the paper's choice) subsamples and zero-pads the
identity; ``shortcut="B"`` uses a 1x1 conv + BN projection.

Feature layers are the stem and each stage.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from exmodel.errors import ConfigError
from exmodel.models.base import ExModelNet, check_common, check_positive_int
from exmodel.models.registry import register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: take every ``stride``-th pixel and zero-pad the new channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W left, W right, H top, H bottom, C front, C back).
        front = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, front, self.extra - front))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection: relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(ExModelNet):
    """Stem (3x3 conv, BN, ReLU) -> stages of BasicBlocks -> global average pool."""

    def __init__(self, num_classes: int, in_channels: int, heads: list[int] | None,
                 widths: Sequence[int], blocks: Sequence[int], strides: Sequence[int], shortcut: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
        names = ["stem"]
        in_ch = widths[0]
        for i, (width, n, stride) in enumerate(zip(widths, blocks, strides), start=1):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_ch, width, stride if j == 0 else 1, shortcut))
                in_ch = width
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            names.append(f"layer{i}")
        self._feature_layer_names = tuple(names)  # type: ignore[misc]
        self._stages = tuple(names[1:])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_heads(in_ch, num_classes, heads)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self._stages:
            x = getattr(self, name)(x)
        return torch.flatten(self.pool(x), 1)


def _check_shortcut(arch: str, shortcut: object) -> str:
    if shortcut not in ("A", "B"):
        raise ConfigError(f"{arch}: 'shortcut' must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}")
    return str(shortcut)


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
             heads: list[int] | None = None, width: int = 64) -> ResNet:
    """CIFAR-style ResNet-18: BasicBlocks [2, 2, 2, 2], widths w..8w, 8w features."""
    check_common("resnet18", num_classes, in_channels, input_size, heads)
    w = check_positive_int("resnet18", "width", width)
    return ResNet(num_classes, in_channels, heads, widths=(w, 2 * w, 4 * w, 8 * w), blocks=(2, 2, 2, 2),
                  strides=(1, 2, 2, 2), shortcut="B")


def _cifar_resnet(arch: str, blocks_per_stage: int, num_classes: int, in_channels: int, input_size: int,
                  heads: list[int] | None, width: int, shortcut: str) -> ResNet:
    check_common(arch, num_classes, in_channels, input_size, heads)
    w = check_positive_int(arch, "width", width)
    return ResNet(num_classes, in_channels, heads, widths=(w, 2 * w, 4 * w), blocks=(blocks_per_stage,) * 3,
                  strides=(1, 2, 2), shortcut=_check_shortcut(arch, shortcut))


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
             heads: list[int] | None = None, width: int = 16, shortcut: str = "A") -> ResNet:
    """He et al. CIFAR ResNet-20 (n = 3): widths 16/32/64, 64 features."""
    return _cifar_resnet("resnet20", 3, num_classes, in_channels, input_size, heads, width, shortcut)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
             heads: list[int] | None = None, width: int = 16, shortcut: str = "A") -> ResNet:
    """He et al. CIFAR ResNet-32 (n = 5): widths 16/32/64, 64 features."""
    return _cifar_resnet("resnet32", 5, num_classes, in_channels, input_size, heads, width, shortcut)
