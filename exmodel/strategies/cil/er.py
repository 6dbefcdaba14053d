"""``er``: experience replay with a class-balanced exemplar memory (Chaudhry et al. 2019;
"replay of stored samples" in van de Ven et al.).

After each task a random sample of every new class's images joins the memory, and every class is cut
to its share of the budget (``memory_size // classes seen``, or ``memory_per_class``). Each training
batch of the next task is extended by as many exemplars, drawn uniformly from the memory.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from exmodel.strategies.base import Step, register_strategy
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner
from exmodel.strategies.cil.memory import ExemplarMemory, random_selection


class ReplayParams(CILParams):
    memory_size: int = Field(2000, ge=1)  # M, shared by every class seen so far
    memory_per_class: int | None = Field(None, ge=1)  # when set: this many per class, a memory that grows


@register_strategy("er")
class ER(IncrementalLearner):
    Params = ReplayParams
    exemplar_free = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.memory = ExemplarMemory(None if p.memory_per_class else p.memory_size, p.memory_per_class)

    def replay(self, batch_size: int):
        return self.memory.sample(batch_size, self.generator)

    def select(self, images, step: Step, m: int):
        return random_selection(len(images), m, self.generator)

    def after_task(self, step: Step, data) -> None:
        m = self.memory.per_class(len(self.seen))
        self.memory.shrink(m)
        for c in step.classes:
            images = data.images[data.labels == c]
            self.memory.add(c, images[self.select(images, step, m)])

    def exemplars(self) -> Any:
        return self.memory.state()

    def state(self) -> Any:
        return {"model": self.model, "exemplars": self.memory.state()}
