"""Strategies: one file each. Importing this package registers them all."""

from exmodel.strategies import cil, ed, ensemble_avg, finetune, joint, m2kd, min_entropy, oracle, param_avg, skd  # noqa: F401  (registration)
from exmodel.strategies.base import (Step, Strategy, StreamInfo, build_strategy, list_strategies, register_strategy,
                                     strategy_class)

__all__ = ["Step", "Strategy", "StreamInfo", "build_strategy", "list_strategies", "register_strategy", "strategy_class"]
