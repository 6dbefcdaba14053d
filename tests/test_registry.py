"""The one registry type behind architectures, knowledge sources and strategies."""

import pytest

from exmodel.errors import ConfigError
from exmodel.models.registry import _REGISTRY as MODELS
from exmodel.registry import Registry
from exmodel.strategies.base import _REGISTRY as STRATEGIES
from exmodel.synthesis.base import _REGISTRY as SOURCES


def test_add_get_and_duplicates():
    reg: Registry[object] = Registry("widget")
    a, b = object(), object()
    assert reg.add("a", a) is a
    assert reg.add("a", a) is a  # the same object again: a no-op (a module imported twice)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", b)
    reg.decorator("b")(b)
    assert reg.get("b") is b and "b" in reg and len(reg) == 2 and list(reg) == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown widget 'c'; available: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="needs a non-empty name"):
        reg.add("", a)


@pytest.mark.parametrize("registry,kind,known", [(MODELS, "architecture", "lenet"), (SOURCES, "knowledge source", "generative"),
                                                 (STRATEGIES, "strategy", "mi_ed")])
def test_every_registry_is_one_and_refuses_a_second_object_under_a_name(registry, kind, known):
    assert isinstance(registry, Registry) and registry.kind == kind and known in registry
    with pytest.raises(ValueError, match=f"{kind} '{known}' is already registered"):
        registry.add(known, object())
    with pytest.raises(ConfigError, match=f"unknown {kind} 'nope'"):
        registry.get("nope")


def test_layering_nothing_below_strategies_imports_them():
    """synthesis, models, experts and data are used by strategies, never the other way round."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "exmodel"
    upward = [str(p.relative_to(root)) for sub in ("synthesis", "models", "experts", "data")
              for p in (root / sub).rglob("*.py") if re.search(r"^\s*(from|import) exmodel\.strategies",
                                                              p.read_text(), re.M)]
    assert upward == []


def test_ed_is_used_through_its_package_functions_only():
    """Outside ``strategies/ed/``, nothing imports ED's modules or reads the strategy's attributes:
    consolidation and the benchmarks go through ``exmodel.strategies.ed``'s public functions."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    ed = repo / "exmodel" / "strategies" / "ed"
    inside = re.compile(r"exmodel\.strategies\.ed\.(strategy|losses|buffer|multitask|params|presets)\b"
                        r"|ExModelDistillation|\.source_name\b")
    offenders = [str(p.relative_to(repo)) for base in ("exmodel", "benchmarks", "examples", "scripts")
                 for p in (repo / base).rglob("*.py") if ed not in p.parents and inside.search(p.read_text())]
    assert offenders == []
