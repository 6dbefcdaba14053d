"""Every shipped config validates, names registered strategies, and its references name its strategies."""

from pathlib import Path

import pytest

from exmodel.config import load_config
from exmodel.models import list_models
from exmodel.strategies import build_strategy, strategy_class
from exmodel.strategies.base import StreamInfo

ALL = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
LLL = [p for p in ALL if p.stem.startswith("lll_")]  # `exmodel lll` configs: another schema
SKILL = [p for p in ALL if p.stem.startswith("skill_")]  # `exmodel skill` configs
CONFIGS = [p for p in ALL if p not in LLL + SKILL]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.expert.arch in list_models()
    info = StreamInfo("nc", 10, (1, 28, 28), (0.5,), (0.5,), ((0, 1),), 1)
    for s in cfg.strategies:
        cls = strategy_class(s.strategy_type)
        cls.Params.model_validate(s.params)  # params valid for the strategy
        if cls.__name__ in ("Finetune", "Joint"):
            build_strategy(s.strategy_type, s.params, info, 0)
    assert set(cfg.reference) <= {s.name for s in cfg.strategies}


@pytest.mark.parametrize("path", LLL, ids=[p.stem for p in LLL])
def test_lll_config_is_valid(path):
    from exmodel.agents.config import LLLConfig

    cfg = load_config(path, model=LLLConfig)
    assert cfg.benchmark.size == "full" and cfg.mappers == ["gmmc", "maha", "ours"]


@pytest.mark.parametrize("path", SKILL, ids=[p.stem for p in SKILL])
def test_skill_config_is_valid(path):
    from exmodel.skill.config import SkillConfig

    cfg = load_config(path, model=SkillConfig)
    queues = cfg.tasks_of(13, [100 + t for t in range(13)])
    assert cfg.benchmark.size == "full" and len(queues) == cfg.agents
    assert sorted(t for q in queues for t in q) == list(range(13))


def test_there_are_configs():
    assert {"split_mnist", "split_fmnist", "joint_mnist", "mt_mnist", "ed_split_mnist"} <= {p.stem for p in CONFIGS}
