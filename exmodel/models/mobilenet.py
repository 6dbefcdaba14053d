"""MobileNetV2 (Sandler et al., 2018), used for the CORe50 experts.

    stem: 3x3 conv, 32 ch, stride 2 -> BN -> ReLU6
    inverted residual stages, table (t = expansion, c = channels, n = repeats, s = first stride):
        (1, 16, 1, 1) (6, 24, 2, 2) (6, 32, 3, 2) (6, 64, 4, 2) (6, 96, 3, 1) (6, 160, 3, 2) (6, 320, 1, 1)
    last: 1x1 conv to 1280 * max(1, width_mult) ch -> BN -> ReLU6 -> global average pool

An inverted residual block is 1x1 expand (t * in ch; skipped when t = 1) -> 3x3 depthwise (stride s)
-> 1x1 linear projection, each followed by BN (ReLU6 except after the projection); it adds its input
when the stride is 1 and the channel count is unchanged. Channel counts are scaled by ``width_mult``
and rounded to a multiple of 8 as in the paper's reference code.

The ImageNet net downsamples 32x in total. For small inputs (``input_size`` <= 64, e.g. 32x32 CIFAR)
the stem and the first downsampling stage use stride 1 instead, so a 32x32 image keeps a 4x4 map at
the end (32 -> 16 -> 8 -> 4 over the three remaining stride-2 stages). A 128x128 CORe50 image goes
through all five stride-2 layers: 128 -> 4.

Feature layers: ``stem``, each table row ``stages.0`` ... ``stages.6``, and ``last``.
"""

from __future__ import annotations

import torch
from torch import nn

from exmodel.errors import ConfigError
from exmodel.models.base import ExModelNet, check_common
from exmodel.models.registry import register_model

# (expansion t, output channels c, repeats n, stride of the first block s) — Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
SMALL_INPUT = 64  # inputs up to this side skip the stem's and the first stage's downsampling
DIVISOR = 8  # channel counts are rounded to multiples of 8 (hardware-friendly, as in the reference)


def make_divisible(value: float, divisor: int = DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_ch, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(ExModelNet):
    _feature_layer_names = ("stem", *(f"stages.{i}" for i in range(len(INVERTED_RESIDUAL_SETTING))), "last")

    def __init__(self, num_classes: int, in_channels: int, input_size: int, heads: list[int] | None,
                 width_mult: float) -> None:
        super().__init__()
        small = input_size <= SMALL_INPUT
        in_ch = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = conv_bn_relu6(in_channels, in_ch, 3, stride=1 if small else 2)
        stages = []
        first_downsample_done = False
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = make_divisible(c * width_mult)
            if s == 2 and not first_downsample_done:
                first_downsample_done = True
                s = 1 if small else s
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        last_ch = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        self.last = conv_bn_relu6(in_ch, last_ch, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_heads(last_ch, num_classes, heads)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.last(self.stages(self.stem(x)))), 1)


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                heads: list[int] | None = None, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2; stride-1 stem and first stage for inputs <= 64 px."""
    check_common("mobilenetv2", num_classes, in_channels, input_size, heads)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ConfigError(f"mobilenetv2: 'width_mult' must be a positive number, got {width_mult!r}")
    return MobileNetV2(num_classes, in_channels, input_size, heads, float(width_mult))
