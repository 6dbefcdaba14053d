"""An auxiliary classifier on an intermediate feature map (M²KD Sec. 3.2, Fig. 3), used in training only.

:func:`attach_auxiliary` adds it to a :class:`~exmodel.strategies.learner.Learner` as the submodule
``aux`` (so the optimiser, ``deepcopy`` and ``state_dict`` see it), reading the output of one named
layer of the network: after the second convolution block of a LeNet, after the second residual stage
of a ResNet (the paper's choice), after the first hidden layer of an MLP. :func:`forward_with_aux`
returns the main logits and the auxiliary ones from one forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from exmodel.errors import ConfigError

DEFAULT_LAYER = {"lenet": "block2", "lenet_bn": "block2", "resnet18": "layer2", "resnet20": "layer2",
                 "resnet32": "layer2", "mlp": "hidden.0"}


class AuxiliaryClassifier(nn.Module):
    """Average pooling of a ``(C, H, W)`` map to ``pool × pool`` (1: global; ``None``: the whole map
    kept), flattened, and one linear layer over every class."""

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int, pool: int | None = 1) -> None:
        super().__init__()
        if len(feature_shape) == 3 and pool is not None:
            side = min(int(pool), int(feature_shape[1]), int(feature_shape[2]))
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten())
            width = int(feature_shape[0]) * side * side
        else:
            self.pool = nn.Flatten()
            width = math.prod(int(d) for d in feature_shape)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(feature_map))


def default_layer(arch: str) -> str:
    if arch not in DEFAULT_LAYER:
        raise ConfigError(f"no default auxiliary layer for architecture {arch!r}; set 'aux_layer' to one of its "
                          f"layers (known: {', '.join(f'{a}: {n}' for a, n in DEFAULT_LAYER.items())})")
    return DEFAULT_LAYER[arch]


def attach_auxiliary(learner: nn.Module, layer: str, pool: int | None = 1) -> AuxiliaryClassifier:
    """Add ``learner.aux`` reading ``learner.net``'s ``layer``; its input shape is measured once."""
    try:
        module = learner.net.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in learner.net.named_children()]
        raise ConfigError(f"aux_layer {layer!r} is not a layer of {learner.arch} (its blocks: {', '.join(names)})") \
            from None
    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("shape", tuple(o.shape[1:])))
    was_training = learner.training
    try:
        learner.eval()
        with torch.no_grad():
            learner(torch.zeros(1, *learner.input_shape, device=learner.mean.device))
    finally:
        handle.remove()
        learner.train(was_training)
    learner.aux = AuxiliaryClassifier(seen["shape"], learner.num_classes, pool).to(learner.mean.device)
    learner.aux_layer = layer
    return learner.aux


def forward_with_aux(learner: nn.Module, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(main logits, auxiliary logits)`` of ``learner`` (one with :func:`attach_auxiliary`) on ``x01``."""
    seen = {}
    handle = learner.net.get_submodule(learner.aux_layer).register_forward_hook(
        lambda m, i, o: seen.__setitem__("map", o))
    try:
        logits = learner(x01)
    finally:
        handle.remove()
    return logits, learner.aux(seen["map"])
