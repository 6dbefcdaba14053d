"""The one interface every exmodel network speaks.

Ex-model continual learning never sees the experts' data, only the experts. Everything downstream
(distillation, synthesis, evaluation, bundles) therefore talks to networks through a small, uniform
surface instead of poking at architecture-specific attributes:

* ``forward_features(x) -> (B, num_features)`` is the trunk: everything up to the classifier.
* ``forward_head(features, task_id)`` is the classifier. A model has either one shared head
  (``head``, class-incremental) or one head per task (``heads``, task-incremental); a multi-head
  model must be told which task it is answering.
* ``bn_layers()`` lists the BatchNorm layers whose running statistics some data-free methods match.
* ``feature_layers()`` lists the named intermediate blocks whose outputs feature distillation reads,
  in forward order, so forward hooks can reach them without knowing the architecture.
* ``arch_name`` / ``arch_kwargs`` are recorded by the registry at build time, so a saved model can be
  rebuilt exactly with ``build_model(model.arch_name, **model.arch_kwargs)``.

Subclasses build their trunk, then call :meth:`ExModelNet._init_heads` and
:meth:`ExModelNet._init_weights`, and list their feature blocks in ``_feature_layer_names``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exmodel.errors import ConfigError


class ExModelNet(nn.Module):
    """Base class: a feature trunk followed by a single head or one head per task."""

    # Dotted submodule names (as in ``named_modules()``) of the blocks ``feature_layers`` returns.
    _feature_layer_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        # Filled in by the registry (see ``exmodel.models.registry.register_model``).
        self.arch_name: str = ""
        self.arch_kwargs: dict[str, Any] = {}
        self._num_features = 0
        self.num_classes = 0
        self.head_sizes: tuple[int, ...] = ()
        self.is_multihead = False

    # ----------------------------------------------------------------------------------- heads
    def _init_heads(self, num_features: int, num_classes: int, heads: Sequence[int] | None) -> None:
        """Create ``head`` (one Linear) or ``heads`` (a ModuleList, one Linear per task)."""
        self._num_features = int(num_features)
        if heads is None:
            self.head = nn.Linear(self._num_features, int(num_classes))
            self.num_classes = int(num_classes)
            self.head_sizes = (int(num_classes),)
            self.is_multihead = False
        else:
            self.heads = nn.ModuleList(nn.Linear(self._num_features, int(n)) for n in heads)
            self.head_sizes = tuple(int(n) for n in heads)
            # For a multi-head model the class count is the total over all tasks' heads.
            self.num_classes = sum(self.head_sizes)
            self.is_multihead = True

    def _init_weights(self) -> None:
        """Deterministic (given ``torch.manual_seed``) initialisation of the trunk.

        Convolutions get He-normal weights (fan-out, ReLU gain) and zero bias, BatchNorm starts as the
        identity (weight 1, bias 0); Linear layers keep PyTorch's default Kaiming-uniform init.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, _BatchNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def num_features(self) -> int:
        """Width of the vector ``forward_features`` returns (the heads' input size)."""
        return self._num_features

    # ----------------------------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, C, H, W)`` to features ``(B, num_features)``."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        """Logits from features.

        A single-head model shares its head across tasks, so ``task_id`` is ignored. A multi-head
        model requires ``task_id`` in ``[0, len(head_sizes))`` and returns that task's logits.
        """
        if not self.is_multihead:
            return self.head(features)
        if task_id is None:
            raise ValueError(
                f"{self.arch_name or type(self).__name__} has {len(self.head_sizes)} task heads; "
                "pass task_id to select one"
            )
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(self.heads):
            raise ValueError(f"task_id must be an int in [0, {len(self.heads)}), got {task_id!r}")
        return self.heads[task_id](features)

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), task_id)

    # ----------------------------------------------------------------------------------- introspection
    def bn_layers(self) -> list[tuple[str, _BatchNorm]]:
        """All BatchNorm layers (1d and 2d) with their dotted names, in registration order."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, _BatchNorm)]

    def feature_layers(self) -> list[tuple[str, nn.Module]]:
        """The named intermediate blocks (conv blocks, residual stages, ...) in forward order."""
        return [(name, self.get_submodule(name)) for name in self._feature_layer_names]


NORM_SWAPS = ("batch", "layer", "none")


def replace_batchnorm(net: nn.Module, kind: str) -> int:
    """Swap every BatchNorm layer of ``net`` in place and return how many were swapped.

    ``batch`` keeps them; ``layer`` puts a per-sample normalization in their place (``GroupNorm`` with
    one group: mean and variance over each sample's channels and positions, with the same affine
    parameters per channel); ``none`` removes them (``Identity``). Per-sample or no normalization keeps
    no running statistics, so a network trained on one input distribution (synthetic images) does not
    carry that distribution's statistics to another (real images)."""
    if kind not in NORM_SWAPS:
        raise ValueError(f"norm must be one of {', '.join(NORM_SWAPS)}, got '{kind}'")
    if kind == "batch":
        return 0
    count = 0
    for name, child in list(net.named_children()):
        if isinstance(child, _BatchNorm):
            new = nn.Identity() if kind == "none" else nn.GroupNorm(1, child.num_features)
            setattr(net, name, new)
            count += 1
        else:
            count += replace_batchnorm(child, kind)
    return count


# --------------------------------------------------------------------------------------- validation
# Factories check their options with these so bad config values fail with one line naming the key.


def check_positive_int(arch: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{arch}: '{key}' must be a positive integer, got {value!r}")
    return value


def check_int_list(arch: str, key: str, value: object, *, allow_empty: bool = False) -> list[int]:
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ConfigError(f"{arch}: '{key}' must be a non-empty list of positive integers, got {value!r}")
    return [check_positive_int(arch, key, v) for v in value]


def check_common(arch: str, num_classes: object, in_channels: object, input_size: object,
                 heads: object) -> None:
    """Validate the four keyword arguments every factory takes."""
    check_positive_int(arch, "num_classes", num_classes)
    check_positive_int(arch, "in_channels", in_channels)
    check_positive_int(arch, "input_size", input_size)
    if heads is not None:
        check_int_list(arch, "heads", heads)


def norm2d(channels: int, enabled: bool) -> nn.Module:
    """``BatchNorm2d`` when enabled, else a no-op (keeps Sequential indices stable)."""
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


def norm1d(features: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm1d(features) if enabled else nn.Identity()
