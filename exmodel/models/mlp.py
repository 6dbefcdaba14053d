"""Multi-layer perceptron: the classic Permuted/Split-MNIST learner.

    flatten -> [Linear -> (BatchNorm1d) -> ReLU -> (Dropout)] per hidden size -> head

The default ``hidden=[400, 400]`` is the two-layer MLP common in the continual-learning literature.
``num_features`` is the last hidden size; each hidden block is a feature layer.
"""

from __future__ import annotations

import torch
from torch import nn

from exmodel.errors import ConfigError
from exmodel.models.base import ExModelNet, check_common, check_int_list, norm1d
from exmodel.models.registry import register_model


class MLP(ExModelNet):
    def __init__(self, num_classes: int, in_channels: int, input_size: int, heads: list[int] | None,
                 hidden: list[int], batchnorm: bool, dropout: float) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        sizes = [in_channels * input_size * input_size, *hidden]
        blocks = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers: list[nn.Module] = [nn.Linear(fan_in, fan_out), norm1d(fan_out, batchnorm), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
        self.hidden = nn.ModuleList(blocks)
        self._feature_layer_names = tuple(f"hidden.{i}" for i in range(len(blocks)))  # type: ignore[misc]
        self._init_heads(hidden[-1], num_classes, heads)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for block in self.hidden:
            x = block(x)
        return x


@register_model("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
        heads: list[int] | None = None, hidden: list[int] = [400, 400],  # noqa: B006 (never mutated)
        batchnorm: bool = False, dropout: float = 0.0) -> MLP:
    """Fully connected network with ``hidden`` layer sizes."""
    check_common("mlp", num_classes, in_channels, input_size, heads)
    sizes = check_int_list("mlp", "hidden", hidden)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"mlp: 'dropout' must be a number in [0, 1), got {dropout!r}")
    return MLP(num_classes, in_channels, input_size, heads, sizes, bool(batchnorm), float(dropout))
