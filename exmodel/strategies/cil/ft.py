"""``ft``: fine-tuning on each new task's data, nothing to keep the old classes — the lower bound of
class-incremental learning (it forgets all but the last task's classes)."""

from __future__ import annotations

from exmodel.strategies.base import register_strategy
from exmodel.strategies.cil.incremental import IncrementalLearner

register_strategy("ft")(IncrementalLearner)
