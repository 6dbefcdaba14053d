"""Validating a component's parameters (strategies, knowledge sources) with one readable error line."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from exmodel.errors import ConfigError

P = TypeVar("P", bound=BaseModel)


def validate_params(what: str, model: type[P], params: dict[str, Any] | None) -> P:
    """``model`` validated from ``params``; ``what`` names the component in the error (e.g. "strategy 'x'")."""
    try:
        return model.model_validate(params or {})
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            raise ConfigError(f"{what}: unknown param '{key}'; allowed: {', '.join(model.model_fields)}") from None
        raise ConfigError(f"{what}: param {key}: {e['msg']}") from None
