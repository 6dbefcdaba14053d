"""Run configuration: YAML files validated with pydantic.

Every section forbids unknown keys, and a validation failure becomes one line naming the key and,
for a misspelt key, the allowed ones (``ConfigError``). ``--set key=value`` overrides use dotted paths
(``expert.epochs=2``, ``strategies.0.params.epochs=1``) with YAML-parsed values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exmodel.errors import ConfigError
from exmodel.fileio import atomic_write_text, read_text

# Run and strategy names become folder and file names (runs/NAME-time/, cells/NAME/, the expert
# cache): one path component, no separators, no "..", nothing a terminal would interpret.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding take everywhere


def check_name(value: str, what: str = "name") -> str:
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be 1-100 letters, digits and . _ + - (starting with a letter or "
                         f"digit, no '..'): it names folders")
    return value


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: ``*name`` repeats a node, and nested repeats grow a few hundred bytes
    into gigabytes ("billion laughs"). Configs never need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML alias *{event.anchor} (line {event.start_mark.line + 1}): aliases and anchors "
                              f"are not accepted in configs; write the values out")
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML without aliases; one-line :class:`ConfigError` on any problem."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(tree: Any) -> str:
    """``tree`` as YAML that :func:`parse_yaml` reads back: values written out, never aliased."""
    return yaml.dump(tree, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


def read_yaml_file(path: Path) -> Any:
    """The YAML document of the file ``path``: bounded in size, UTF-8, no aliases."""
    return parse_yaml(read_text(path, "config file", ConfigError), str(path))


def claim_run_folder(out: Path, cfg: BaseModel, same=None) -> None:
    """Write ``cfg`` to ``out/config.yaml``, or check that the run folder already holds the same config.
    Stored configs are compared after validation (``same(stored, cfg)``, default equality), so a run
    made before a new defaulted key existed can still be resumed."""
    path = out / "config.yaml"
    if path.exists():
        try:
            stored = type(cfg).model_validate(read_yaml_file(path))
            ok = (same or (lambda a, b: a == b))(stored, cfg)
        except (ConfigError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{out} holds a run of a different config; use another --out to start a new run")
    atomic_write_text(path, dump_yaml(cfg.model_dump(mode="json")))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScenarioConfig(_Strict):
    dataset: str = "mnist"
    kind: Literal["nc", "ni", "mt", "joint", "cil"] = "nc"
    n_experiences: int = Field(5, ge=1)
    class_order: list[int] | None = None
    shuffle_classes: bool = True  # seeded class order per run seed (Avalanche's Split-MNIST default)
    # One fixed class order for every run seed: numpy's permutation under this seed, as iCaRL, PyCIL
    # and the SKD/M²KD papers draw it (CIFAR-100: 1993).
    class_order_seed: int | None = Field(None, ge=0, le=2**32 - 1)
    # kind "cil" (class-incremental learning from data): "half_base" — a base task of `base_classes`
    # (half the classes by default), then `n_tasks` equal tasks; "from_scratch" — `n_tasks` equal
    # tasks. `class_groups` lists every task's classes instead. `n_experiences` is derived.
    protocol: Literal["half_base", "from_scratch"] | None = None
    n_tasks: int | None = None
    base_classes: int | None = None
    class_groups: list[list[int]] | None = None
    first_experience_classes: int | None = None  # e.g. CORe50-NC: 10 classes first, then 5 each
    # Seeded class-balanced subsampling (quick runs and tests); None keeps every sample.
    train_per_class: int | None = Field(None, ge=1)
    test_per_class: int | None = Field(None, ge=1)
    # Tuning mode: evaluate on this fraction of the training data (per class, seeded) instead of the
    # test set, which is then never read. Hyperparameters are chosen this way.
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    # kind "ni" only: "stratified" shards every class over the experiences; "groups" gives each
    # experience whole groups of the training set (CORe50: recording sessions, the NI protocol).
    ni_split: Literal["stratified", "groups"] = "stratified"


class ExpertConfig(_Strict):
    """How the stream of experts is trained (once per seed, then cached)."""

    arch: str = "lenet"
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    # full: every expert has one output per class of the whole label space (as in the paper's
    # reference code, so that parameter averaging is defined); local: only its own classes.
    head: Literal["full", "local"] = "full"
    # All experts of a stream start from the same random initialization (as when every site fine-tunes
    # one shared pretrained model); independent initializations otherwise.
    shared_init: bool = False
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0


class StrategyConfig(_Strict):
    name: str  # the name in results (e.g. "mi_ed_paper")
    type: str | None = None  # the registered strategy (defaults to name)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "strategy name")

    @property
    def strategy_type(self) -> str:
        return self.type or self.name


class Reference(_Strict):
    mean: float
    std: float | None = None  # None when the source gives none (shown as the mean alone)
    source: str = ""


class RunConfig(_Strict):
    name: str = "split_mnist"
    scenario: ScenarioConfig = Field(default_factory=ScenarioConfig)
    expert: ExpertConfig = Field(default_factory=ExpertConfig)
    strategies: list[StrategyConfig] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "cpu"
    eval_batch_size: int = Field(1000, ge=1)
    reference: dict[str, Reference] = Field(default_factory=dict)  # the paper's numbers, shown beside ours

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "config name")

    @field_validator("seeds")
    @classmethod
    def _seeds_in_range(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("list at least one seed")
        for seed in value:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed} is out of range [0, {MAX_SEED}]")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        from exmodel.devices import parse_device

        try:
            parse_device(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Allowed keys at a location of a validation error (walks nested models by field name)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc)
        return f"{source}: unknown key '{key}'; allowed: {', '.join(allowed)}"
    return f"{source}: {key}: {e['msg']}"


def set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(p)]
        else:
            node = node.setdefault(p, {} if not parts[i + 1].isdigit() else [])
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        out.append((key.strip(), parse_yaml(raw, f"--set {key.strip()}")))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                default: dict | None = None, model: type[BaseModel] | None = None) -> Any:
    """Read a YAML config (or ``default`` when no path), apply ``--set`` overrides, validate it as
    ``model`` (a :class:`RunConfig` unless told otherwise)."""
    model = model or RunConfig
    source = str(path) if path else "default config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        tree = read_yaml_file(p) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        tree.setdefault("name", p.stem)
    else:
        tree = dict(default or {})
    for key, value in parse_overrides(overrides or []):
        try:
            set_path(tree, key, value)
        except (IndexError, ValueError, TypeError, AttributeError):
            raise ConfigError(f"--set {key}: no such entry in {source}") from None
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None
