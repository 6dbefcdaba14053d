"""What a strategy is.

A strategy sees the stream one step at a time. It declares what it consumes (``consumes``, a set of
:data:`INPUTS`): ``"expert"``, the step's trained expert; ``"data"``, the experience's training data.
The runner provides exactly that and ``None`` for the rest, and it trains (or loads) the stream of
experts only when some strategy of the run consumes them. Ex-model strategies consume experts only:
the runner never hands them data. After each step the runner
evaluates ``predict``. What the strategy keeps between steps is whatever :meth:`state` returns; the
runner measures its bytes (the paper's point: an ex-model learner's state must not grow with the stream).

Adding a strategy: subclass :class:`Strategy`, declare a pydantic ``Params`` class with the paper's
defaults, decorate with ``@register_strategy("name")``, and add it to ``exmodel/strategies/__init__.py``.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from exmodel.data.types import ImageDataset
from exmodel.experts.expert import Expert
from exmodel.errors import ConfigError
from exmodel.params import validate_params
from exmodel.registry import Registry
from exmodel.rng import PrivateRNG


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


INPUTS = frozenset({"expert", "data"})


class Strategy(ABC):
    consumes: ClassVar[frozenset[str]] = frozenset({"expert"})  # a subset of INPUTS
    ex_model: ClassVar[bool] = True  # respects the ex-model constraints (no data, bounded state)
    exemplar_free: ClassVar[bool] = True  # keeps no real training images between steps
    Params: ClassVar[type[Params]] = Params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.consumes <= INPUTS:
            raise TypeError(f"{cls.__name__}.consumes lists {sorted(cls.consumes - INPUTS)}, not among {sorted(INPUTS)}")
        if "observe" in cls.__dict__:  # every step draws its global-RNG numbers from the strategy's own stream
            cls.observe = _with_private_rng(cls.__dict__["observe"])

    @property
    def uses_data(self) -> bool:
        """Receives the experience's training data (the reference strategies: joint, finetune)."""
        return "data" in self.consumes

    def __init__(self, info: StreamInfo, params: Params, seed: int, device: str = "cpu") -> None:
        self.info, self.params, self.seed, self.device = info, params, seed, device
        self.generator = torch.Generator().manual_seed(seed)
        # Weight initialisation and kornia draw from torch's global generator. Inside ``observe``
        # they draw from this stream, seeded with ``seed`` and kept between steps: the same seed
        # gives the same model whatever ran before or between the steps, and the caller's global
        # state is left alone.
        self.global_rng = PrivateRNG(seed)
        # step -> each loss term's mean over that step's training (strategies that train fill it;
        # the runner writes it into the step's event)
        self.loss_log: dict[int, dict[str, float]] = {}

    @abstractmethod
    def observe(self, step: Step, expert: Expert | None, data: ImageDataset | None, progress=None) -> None:
        """Consume the step's expert and/or data, as declared by ``consumes`` (``None`` otherwise)."""

    @abstractmethod
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Scores over the global label space, shape (B, num_classes); higher = more likely."""

    @abstractmethod
    def state(self) -> Any:
        """Everything kept between steps (measured by ``state_bytes``)."""

    def exemplars(self) -> Any:
        """The real training images kept between steps (part of :meth:`state`); ``None`` for
        exemplar-free strategies. The runner reports their bytes beside the whole state's."""
        return None

    def mask_to_tasks(self, scores: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Keep only each sample's task classes (multi-task streams, where the task label is given)."""
        mask = torch.zeros(len(self.info.task_classes), self.info.num_classes, dtype=torch.bool)
        for t, cls in enumerate(self.info.task_classes):
            mask[t, list(cls)] = True
        return scores.masked_fill(~mask[task_ids.cpu()].to(scores.device), float("-inf"))


def _with_private_rng(observe):
    @functools.wraps(observe)
    def wrapped(self, *args, **kwargs):
        with self.global_rng.scope():
            return observe(self, *args, **kwargs)
    return wrapped


_REGISTRY: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(name: str):
    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.type_name = name
        return _REGISTRY.add(name, cls)
    return deco


def list_strategies() -> list[str]:
    return _REGISTRY.names()


def strategy_class(name: str) -> type[Strategy]:
    return _REGISTRY.get(name)


EXEMPLAR_PARAMS = ("memory_size", "memory_per_class")  # the exemplar budget of strategies that keep images


def strategy_params(name: str, params: dict | None, label: str | None = None) -> Params:
    """The validated params of registered strategy ``name`` (``label``: its name in the config). An
    exemplar budget given to an exemplar-free strategy is an error of its own: it would do nothing."""
    cls = strategy_class(name)
    what = f"strategy '{label or name}'"
    budget = [k for k in EXEMPLAR_PARAMS if k in (params or {})]
    if budget and cls.exemplar_free:
        keeping = [n for n in list_strategies() if any(k in strategy_class(n).Params.model_fields for k in EXEMPLAR_PARAMS)]
        raise ConfigError(f"{what} is exemplar-free: it keeps no training images, so '{budget[0]}' does not apply "
                          f"(strategies with an exemplar memory: {', '.join(keeping)})")
    return validate_params(what, cls.Params, params)


def build_strategy(name: str, params: dict, info: StreamInfo, seed: int, device: str = "cpu") -> Strategy:
    return strategy_class(name)(info, strategy_params(name, params), seed, device)
