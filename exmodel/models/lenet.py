"""LeNet-5, the small convnet used for the Split-MNIST experts.

    conv(in, 6, 5x5) -> ReLU -> maxpool 2 -> conv(6, 16, 5x5) -> ReLU -> maxpool 2
    -> flatten -> fc 120 -> ReLU -> fc 84 -> ReLU -> head

The original LeNet-5 reads 32x32 images; 28x28 MNIST digits are zero-padded by 2 in the first
convolution so the trunk is identical: 32 -> 28 (conv) -> 14 (pool) -> 10 (conv) -> 5 (pool), i.e.
16 * 5 * 5 = 400 flattened features for either input size.

``batchnorm=True`` adds BatchNorm2d after each convolution and BatchNorm1d after each hidden fc (before
the ReLU); ``lenet_bn`` is that variant under its own name, for methods that need BN statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from exmodel.errors import ConfigError
from exmodel.models.base import ExModelNet, check_common, norm1d, norm2d
from exmodel.models.registry import register_model

KERNEL = 5  # both convolutions are 5x5, unpadded except the MNIST padding below
HIDDEN = (120, 84)  # the two hidden fully connected layers of LeNet-5


class MaxPool2(nn.MaxPool2d):
    """2x2 max pooling with stride 2. Without gradients (teachers, evaluation, synthesis targets seen
    through no-grad passes) it is two elementwise maxima — the same values, ~10x faster than
    ``max_pool2d`` on CPU (2.2 vs 0.2 ms for 128 x 6 x 28 x 28); with gradients ``max_pool2d``, whose
    backward is the faster one. Odd sides go to ``max_pool2d`` as well (it drops the last row/column)."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or x.shape[-1] % 2 or x.shape[-2] % 2:
            return super().forward(x)
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class LeNet(ExModelNet):
    _feature_layer_names = ("block1", "block2", "fc1", "fc2")

    def __init__(self, num_classes: int, in_channels: int, input_size: int,
                 heads: list[int] | None, batchnorm: bool) -> None:
        super().__init__()
        # Inputs smaller than 32 (MNIST's 28) are padded by 2 so the first conv sees LeNet's 32x32.
        padding = 2 if input_size < 32 else 0
        side = self.spatial_side(input_size, padding)
        if side < 1:
            raise ConfigError(f"lenet: 'input_size' {input_size} is too small; need at least 12")
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, 6, KERNEL, padding=padding), norm2d(6, batchnorm), nn.ReLU(),
            MaxPool2(),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(6, 16, KERNEL), norm2d(16, batchnorm), nn.ReLU(), MaxPool2(),
        )
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(nn.Linear(16 * side * side, HIDDEN[0]), norm1d(HIDDEN[0], batchnorm), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(HIDDEN[0], HIDDEN[1]), norm1d(HIDDEN[1], batchnorm), nn.ReLU())
        self._init_heads(HIDDEN[1], num_classes, heads)
        self._init_weights()

    @staticmethod
    def spatial_side(input_size: int, padding: int) -> int:
        """Side of the feature map after block2: two (5x5 conv, 2x2 pool) stages."""
        side = input_size + 2 * padding - (KERNEL - 1)
        side //= 2
        side -= KERNEL - 1
        return side // 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.flatten(self.block2(self.block1(x)))))


def _build(arch: str, num_classes: int, in_channels: int, input_size: int, heads: list[int] | None,
           batchnorm: bool) -> LeNet:
    check_common(arch, num_classes, in_channels, input_size, heads)
    return LeNet(num_classes, in_channels, input_size, heads, bool(batchnorm))


@register_model("lenet")
def lenet(num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
          heads: list[int] | None = None, batchnorm: bool = False) -> LeNet:
    """LeNet-5; ``batchnorm=True`` adds BatchNorm after every conv and hidden fc."""
    return _build("lenet", num_classes, in_channels, input_size, heads, batchnorm)


@register_model("lenet_bn")
def lenet_bn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
             heads: list[int] | None = None) -> LeNet:
    """LeNet-5 with BatchNorm (same as ``lenet(batchnorm=True)``)."""
    return _build("lenet_bn", num_classes, in_channels, input_size, heads, True)
