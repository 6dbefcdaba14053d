"""The expert card: everything a consumer must know about a trained model besides its weights.

An expert travels as a bundle directory holding ``weights.safetensors`` and ``card.json``. The card
says which architecture to rebuild (``arch`` + ``arch_kwargs``), which global class each output unit
of the (single) head stands for (``class_ids``), how inputs in [0, 1] must be normalized, and the
SHA-256 of the weights file it was saved with. Since cards arrive from other people, every field is
validated and any problem becomes a one-line :class:`~exmodel.errors.BundleError` such as
``card.json: class_ids[3]=12 is out of range [0, 10)``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)

import exmodel
from exmodel import limits
from exmodel.errors import BundleError
from exmodel.fileio import read_text
from exmodel.text import unsafe_characters

MAX_NAME_LENGTH = 200  # card name, arch, scenario and each class name

CARD_FORMAT_VERSION = 1
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    """('normalization', 'std', 0) -> 'normalization.std[0]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    """Turn a pydantic ValidationError into one readable line prefixed by ``source``: every problem
    (up to eight), separated by semicolons."""
    # An unknown key is usually a typo, and the cause of any "missing key" error next to it.
    errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
    lines = [_describe(e, model) for e in errors[:8]]
    more = len(errors) - len(lines)
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {'; '.join(lines)}{suffix}"


def _describe(error: dict, model: type[BaseModel]) -> str:
    """One problem of a pydantic error list as a short phrase naming the field."""
    loc = tuple(error.get("loc", ()))
    where = _format_loc(loc)
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        known = list(model.model_fields) if len(loc) == 1 else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{where}'{hint}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"{_format_loc(loc[:-1])}: too few items (item {loc[-1]} is missing)"
    if kind == "missing":
        return f"missing required key '{where}'"
    if kind == "value_error":
        # Our own validators: the message already names the field.
        line = msg.removeprefix("Value error, ")
        return f"{where}: {line}" if where else line
    return f"{where}: {msg} (got {_short_repr(error.get('input'))})" if where else msg


class Normalization(BaseModel):
    """Per-channel ``(x - mean) / std`` applied to inputs in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> "Normalization":
        if not self.mean:
            raise ValueError("mean must list one value per channel, got []")
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}"
            )
        for i, m in enumerate(self.mean):
            if not math.isfinite(m):
                raise ValueError(f"mean[{i}]={m} is not finite")
        for i, s in enumerate(self.std):
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"std[{i}]={s} must be a finite number > 0")
        return self


class ExpertCard(BaseModel):
    """Metadata of one expert; see the module docstring.

    Constructing a card (``ExpertCard(...)``, :meth:`from_dict`, :meth:`from_json_file`) raises a
    one-line :class:`BundleError` on any invalid field; the validation context key ``"source"``
    (default ``"card"``) names where the data came from.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = CARD_FORMAT_VERSION
    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    class_ids: list[int]
    class_names: list[str]
    trained_class_ids: list[int]
    num_global_classes: int = Field(ge=1)
    task_id: int | None = Field(default=None, ge=0)
    experience: int | None = Field(default=None, ge=0)
    scenario: str | None = None
    input_shape: tuple[int, int, int]
    normalization: Normalization
    training: dict[str, Any] = Field(default_factory=dict)
    test_accuracy: float | None = None
    library_version: str = Field(default_factory=lambda: exmodel.__version__)
    weights_sha256: str = ""  # "" until save_bundle hashes the weights
    program_sha256: str = ""  # arch "program" only: SHA-256 of program.json (the torch.export graph)
    created: str = Field(default_factory=_now_iso)

    @model_validator(mode="after")
    def _check(self) -> "ExpertCard":
        if self.format_version != CARD_FORMAT_VERSION:
            raise ValueError(
                f"format_version={self.format_version} is not supported (this exmodel reads {CARD_FORMAT_VERSION})"
            )
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if not self.arch.strip():
            raise ValueError("arch must not be empty")
        self._check_text()
        self._check_classes()
        self._check_shape_and_kwargs()
        if self.test_accuracy is not None and not 0.0 <= self.test_accuracy <= 1.0:
            raise ValueError(f"test_accuracy={self.test_accuracy} must be in [0, 1]")
        for key in ("weights_sha256", "program_sha256"):
            if getattr(self, key) and not _SHA256_HEX.match(getattr(self, key)):
                raise ValueError(f"{key} must be 64 lowercase hex digits (or empty before saving)")
        try:
            datetime.fromisoformat(self.created)
        except ValueError:
            raise ValueError(f"created={self.created!r} is not an ISO 8601 time") from None
        return self

    def _check_text(self) -> None:
        """Names are shown on terminals and used in file names: printable, and of a sane length."""
        fields = [("name", self.name), ("arch", self.arch), ("scenario", self.scenario or "")]
        fields += [(f"class_names[{i}]", n) for i, n in enumerate(self.class_names)]
        for key, text in fields:
            if bad := unsafe_characters(text):
                raise ValueError(f"{key} holds control or text-direction characters ({', '.join(dict.fromkeys(bad))}); "
                                 f"names must be printable text")
            if len(text) > MAX_NAME_LENGTH:
                raise ValueError(f"{key} is {len(text)} characters long, more than {MAX_NAME_LENGTH}")

    def _check_classes(self) -> None:
        n = self.num_global_classes
        if n > (cap := limits.max_classes()):
            raise ValueError(f"num_global_classes={n} is more than the {cap} allowed (EXMODEL_MAX_CLASSES)")
        if not self.class_ids:
            raise ValueError("class_ids must not be empty")
        seen: set[int] = set()
        for i, c in enumerate(self.class_ids):
            if not 0 <= c < n:
                raise ValueError(f"class_ids[{i}]={c} is out of range [0, {n})")
            if c in seen:
                raise ValueError(f"class_ids[{i}]={c} is a duplicate")
            seen.add(c)
        if len(self.class_names) != len(self.class_ids):
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but class_ids has {len(self.class_ids)}"
            )
        trained: set[int] = set()
        for i, c in enumerate(self.trained_class_ids):
            if c not in seen:
                raise ValueError(f"trained_class_ids[{i}]={c} is not in class_ids")
            if c in trained:
                raise ValueError(f"trained_class_ids[{i}]={c} is a duplicate")
            trained.add(c)

    def _check_shape_and_kwargs(self) -> None:
        c, h, w = self.input_shape
        if min(self.input_shape) <= 0:
            raise ValueError(f"input_shape={list(self.input_shape)} must be positive (C, H, W)")
        if c * h * w > (cap := limits.max_input_values()):
            raise ValueError(f"input_shape={list(self.input_shape)} has {c * h * w} values, more than the {cap} "
                             f"allowed (EXMODEL_MAX_INPUT_VALUES)")
        if len(self.normalization.mean) != c:
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} channels but input_shape has C={c}"
            )
        kw = self.arch_kwargs
        n_out = len(self.class_ids)
        heads = kw.get("heads")
        if heads is not None:
            # Multi-head network: the card describes the head of its own task, heads[task_id].
            if not isinstance(heads, (list, tuple)) or not heads:
                raise ValueError(f"arch_kwargs.heads={heads!r} must be a non-empty list of head sizes")
            if self.task_id is None or self.task_id >= len(heads):
                raise ValueError(
                    f"arch_kwargs.heads lists {len(heads)} task heads, so task_id must be in [0, {len(heads)}),"
                    f" got {self.task_id}"
                )
            if heads[self.task_id] != n_out:
                raise ValueError(
                    f"arch_kwargs.heads[{self.task_id}]={heads[self.task_id]} but class_ids lists {n_out} output units"
                )
        elif "num_classes" in kw and kw["num_classes"] != n_out:
            raise ValueError(f"arch_kwargs.num_classes={kw['num_classes']} but class_ids lists {n_out} output units")
        if "in_channels" in kw and kw["in_channels"] != c:
            raise ValueError(f"arch_kwargs.in_channels={kw['in_channels']} but input_shape has C={c}")
        if "input_size" in kw:
            size = kw["input_size"]
            if isinstance(size, int):
                expected = [size, size]
            else:
                expected = list(size) if isinstance(size, (list, tuple)) else []
            if expected != [h, w]:
                raise ValueError(f"arch_kwargs.input_size={size!r} but input_shape has H, W = {h}, {w}")

    # Declared after the other validators so that it wraps them all (pydantic nests in order).
    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            source = (info.context or {}).get("source", "card")
            raise BundleError(format_validation_error(exc, source, cls)) from None

    # ----------------------------------------------------------------- JSON round trip
    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "card") -> "ExpertCard":
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        return cls.model_validate(data, context={"source": source})

    @classmethod
    def from_json(cls, text: str, source: str = "card.json") -> "ExpertCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(
                f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        except RecursionError:
            raise BundleError(f"{source}: JSON nested too deeply") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ExpertCard":
        return cls.from_json(read_text(path, "card file", BundleError), str(path))

    @classmethod
    def from_json_bytes(cls, raw: bytes, source: str = "card.json") -> "ExpertCard":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{source}: the card file is not UTF-8 text") from None
        return cls.from_json(text, source)
