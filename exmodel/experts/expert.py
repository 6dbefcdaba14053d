"""An expert: a trained network together with the card that says how to use it.

Consumers never need to know how an expert was trained. They feed images as floats in [0, 1] shaped
like ``card.input_shape``; the expert applies its own per-channel normalization (kept as buffers so
it follows ``.to(device)``) and runs the network. The logits it returns cover only its own classes,
``card.class_ids``, in head order. :meth:`Expert.global_logits` places them in the global label space
of ``card.num_global_classes`` columns so that experts trained on different classes can be compared
and combined column by column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from exmodel.errors import DataError
from exmodel.experts.card import ExpertCard


def to_global(
    logits: torch.Tensor,
    class_ids: Sequence[int] | torch.Tensor,
    num_global_classes: int,
    fill: float = float("-inf"),
) -> torch.Tensor:
    """Scatter local logits ``(B, K)`` into ``(B, num_global_classes)``.

    Column ``class_ids[k]`` of the result holds ``logits[:, k]``; every other column is ``fill``
    (``-inf`` by default, so a softmax over the result gives those classes probability 0).
    """
    index = torch.as_tensor(class_ids, dtype=torch.long, device=logits.device)
    if logits.ndim != 2 or index.ndim != 1 or logits.shape[1] != index.numel():
        raise ValueError(
            f"to_global: logits of shape {tuple(logits.shape)} do not match {index.numel()} class ids"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_global_classes):
        raise ValueError(f"to_global: class ids must lie in [0, {num_global_classes})")
    if torch.unique(index).numel() != index.numel():
        raise ValueError("to_global: class ids must be unique")
    out = logits.new_full((logits.shape[0], num_global_classes), fill)
    out[:, index] = logits
    return out


class Expert(nn.Module):
    """``card`` (an :class:`ExpertCard`) plus ``net``; see the module docstring."""

    def __init__(self, card: ExpertCard, net: nn.Module) -> None:
        super().__init__()
        self.card = card
        self.net = net
        channels = card.input_shape[0]
        # Non-persistent: the card is the source of truth for normalization, the weights file holds
        # only the network's own tensors.
        mean = torch.tensor(card.normalization.mean, dtype=torch.float32).view(1, channels, 1, 1)
        std = torch.tensor(card.normalization.std, dtype=torch.float32).view(1, channels, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.register_buffer("class_index", torch.tensor(card.class_ids, dtype=torch.long), persistent=False)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def class_ids(self) -> list[int]:
        return list(self.card.class_ids)

    def units(self, classes) -> list[int]:
        """The output units of the global class ids ``classes`` (each must be one of ``class_ids``)."""
        ids = list(self.card.class_ids)
        return [ids.index(c) for c in classes]

    @property
    def num_global_classes(self) -> int:
        return self.card.num_global_classes

    def _check_input(self, x01: torch.Tensor) -> None:
        expected = tuple(self.card.input_shape)
        if x01.ndim != 4 or tuple(x01.shape[1:]) != expected:
            raise DataError(
                f"expert '{self.card.name}' expects images shaped (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x01.shape)}"
            )

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Apply the card's per-channel ``(x - mean) / std`` to images in [0, 1]."""
        self._check_input(x01)
        return (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)

    def forward(self, x01: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        """Logits ``(B, len(card.class_ids))`` for images in [0, 1].

        ``task_id`` defaults to the card's task (it selects the head of a multi-head network; a
        single-head network ignores it).
        """
        tid = self.card.task_id if task_id is None else task_id
        return self.net(self.normalize(x01), task_id=tid)

    def global_logits(
        self, x01: torch.Tensor, task_id: int | None = None, fill: float = float("-inf")
    ) -> torch.Tensor:
        """Logits ``(B, card.num_global_classes)``; classes this expert lacks get ``fill``."""
        return to_global(self.forward(x01, task_id), self.class_index, self.card.num_global_classes, fill)

    # ------------------------------------------------------------------ experts as users hold them
    @classmethod
    def from_module(cls, module: nn.Module, *, classes: Sequence[int] | None = None,
                    normalization: Any = None, input_shape: Sequence[int] | None = None,
                    name: str = "expert", **card_options: Any) -> "Expert":
        """An expert from a trained ``nn.Module`` of any architecture, exported with ``torch.export``.

        ``classes``: the global class id of each output unit; ``normalization``: ``(mean, std)`` per
        channel the module's inputs were normalized with (default none); ``input_shape``: (C, H, W).
        Further options (``dataset``, ``class_names``, ``num_classes``, ``trained_classes``,
        ``example``) as in :func:`exmodel.experts.imports.make_card`.
        """
        from exmodel.experts.imports import expert_from_module

        return expert_from_module(module, name=name, input_shape=input_shape, classes=classes,
                                  **_normalization(normalization), **card_options)

    @classmethod
    def from_file(cls, path: Any, *, classes: Sequence[int] | None = None, normalization: Any = None,
                  **card_options: Any) -> "Expert":
        """An expert from a ``torch.export`` file (``.pt2``), read without unpickling anything, or from a
        bundle directory (then the options must be left out: the card says it all)."""
        from pathlib import Path

        from exmodel.experts.bundle import load_bundle
        from exmodel.experts.imports import import_program

        if Path(path).is_dir():
            if classes is not None or normalization is not None or card_options:
                raise DataError(f"{path} is a bundle: its card already gives classes and normalization")
            return load_bundle(path)
        return import_program(path, classes=classes, **_normalization(normalization), **card_options)

    def extra_repr(self) -> str:
        return f"name={self.card.name!r}, arch={self.card.arch!r}, class_ids={self.card.class_ids}"


def _normalization(value: Any) -> dict[str, Any]:
    """``(mean, std)``, ``{"mean": ..., "std": ...}`` or None -> keyword arguments of ``make_card``."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {"mean": list(value["mean"]), "std": list(value["std"])}
    mean, std = value
    as_list = lambda v: [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]  # noqa: E731
    return {"mean": as_list(mean), "std": as_list(std)}
