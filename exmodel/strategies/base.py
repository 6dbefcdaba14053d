"""What a strategy is.

A strategy sees the stream one step at a time. At step i it receives the i-th expert and, only if it
declares ``uses_data`` (the reference strategies: joint, finetune), the experience's training data.
Ex-model strategies get ``data=None``: the runner never hands them data. After each step the runner
evaluates ``predict``. What the strategy keeps between steps is whatever :meth:`state` returns; the
runner measures its bytes (the paper's point: an ex-model learner's state must not grow with the stream).

Adding a strategy: subclass :class:`Strategy`, declare a pydantic ``Params`` class with the paper's
defaults, decorate with ``@register_strategy("name")``, and add it to ``exmodel/strategies/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError
from exmodel.experts.expert import Expert
from exmodel.params import validate_params


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StreamInfo:
    """What a strategy may know about the stream up front (no data)."""

    kind: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task_classes: tuple[tuple[int, ...], ...]
    n_experiences: int
    data_dir: str | None = None  # where the run reads datasets (for auxiliary data); None = embedded


@dataclass(frozen=True)
class Step:
    index: int
    task_id: int
    classes: tuple[int, ...]


class Strategy(ABC):
    ex_model: ClassVar[bool] = True  # respects the ex-model constraints (no data, bounded state)
    uses_data: ClassVar[bool] = False  # receives the experience's training data
    Params: ClassVar[type[Params]] = Params

    def __init__(self, info: StreamInfo, params: Params, seed: int, device: str = "cpu") -> None:
        self.info, self.params, self.seed, self.device = info, params, seed, device
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def observe(self, step: Step, expert: Expert, data: ImageDataset | None, progress=None) -> None:
        """Consume the step's expert (and data, for data-based strategies)."""

    @abstractmethod
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Scores over the global label space, shape (B, num_classes); higher = more likely."""

    @abstractmethod
    def state(self) -> Any:
        """Everything kept between steps (measured by ``state_bytes``)."""

    def mask_to_tasks(self, scores: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Keep only each sample's task classes (multi-task streams, where the task label is given)."""
        mask = torch.zeros(len(self.info.task_classes), self.info.num_classes, dtype=torch.bool)
        for t, cls in enumerate(self.info.task_classes):
            mask[t, list(cls)] = True
        return scores.masked_fill(~mask[task_ids.cpu()].to(scores.device), float("-inf"))


_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(name: str):
    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def list_strategies() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown strategy '{name}'; available: {', '.join(list_strategies())}")
    return _REGISTRY[name]


def build_strategy(name: str, params: dict, info: StreamInfo, seed: int, device: str = "cpu") -> Strategy:
    cls = strategy_class(name)
    return cls(info, validate_params(f"strategy '{name}'", cls.Params, params), seed, device)
