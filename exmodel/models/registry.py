"""Architectures by name.

A model is built from a name plus keyword options (``build_model("lenet", num_classes=2)``) so that
configs, expert cards and bundles can describe a network as plain JSON. Each architecture is a
factory function decorated with ``@register_model("name")``. Every factory takes
``num_classes``, ``in_channels``, ``input_size`` and ``heads`` (all with defaults) plus its own
options, and returns an :class:`~exmodel.models.base.ExModelNet`.

The decorator records on every model it builds ``arch_name`` and ``arch_kwargs`` (all of the
factory's keyword arguments, defaults filled in, as JSON-friendly values) so that
``build_model(m.arch_name, **m.arch_kwargs)`` rebuilds the same architecture.

Every architecture also takes ``norm``: ``"batch"`` (default) keeps its BatchNorm layers, ``"layer"``
and ``"none"`` swap them for per-sample normalization or nothing
(:func:`~exmodel.models.base.replace_batchnorm`); it is recorded in ``arch_kwargs`` like the rest.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable, TypeVar

from exmodel.errors import ConfigError
from exmodel.models.base import NORM_SWAPS, ExModelNet, replace_batchnorm
from exmodel.registry import Registry

# Keyword arguments every factory must accept.
COMMON_KWARGS = ("num_classes", "in_channels", "input_size", "heads")

_REGISTRY: Registry[Callable[..., ExModelNet]] = Registry("architecture")

F = TypeVar("F", bound=Callable[..., ExModelNet])


def _jsonable(value: Any) -> Any:
    """Tuples become lists (recursively) so arch_kwargs survive a JSON round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return copy.deepcopy(value)


def register_model(name: str) -> Callable[[F], F]:
    """Register a factory under ``name``; its models get ``arch_name``/``arch_kwargs`` recorded."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY:  # checked before wrapping: the wrapper is always a new object
            raise ValueError(f"architecture {name!r} is already registered")
        params = inspect.signature(factory).parameters
        missing = [k for k in COMMON_KWARGS if k not in params]
        no_default = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
        if missing or no_default:
            raise TypeError(
                f"factory for {name!r} must take {', '.join(COMMON_KWARGS)} and give every argument "
                f"a default (missing: {missing}, without default: {no_default})"
            )
        if "norm" in params:
            raise TypeError(f"factory for {name!r} must not take 'norm' (every architecture gets it from the registry)")
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def build(*args: Any, norm: str = "batch", **kwargs: Any) -> ExModelNet:
            if norm not in NORM_SWAPS:
                raise ConfigError(f"{name}: 'norm' must be one of {', '.join(NORM_SWAPS)}, got {norm!r}")
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            recorded = {k: _jsonable(v) for k, v in bound.arguments.items()}
            model = factory(*bound.args, **bound.kwargs)
            replace_batchnorm(model, norm)
            model.arch_name = name
            model.arch_kwargs = {**recorded, "norm": norm}
            return model

        _REGISTRY.add(name, build)
        return build  # type: ignore[return-value]

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return _REGISTRY.names()


def _factory(name: str) -> Callable[..., ExModelNet]:
    return _REGISTRY.get(name)


def model_signature(name: str) -> dict[str, Any]:
    """The keyword arguments architecture ``name`` accepts, mapped to their defaults."""
    params = inspect.signature(_factory(name)).parameters
    return {**{k: copy.deepcopy(p.default) for k, p in params.items()}, "norm": "batch"}


def build_model(name: str, **kwargs: Any) -> ExModelNet:
    """Build architecture ``name``; unknown names and options raise :class:`ConfigError`."""
    factory = _factory(name)
    allowed = model_signature(name)
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(repr(k) for k in unknown)} for architecture '{name}'; "
            f"allowed: {', '.join(allowed)}"
        )
    return factory(**kwargs)
