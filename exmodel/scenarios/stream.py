"""Experiences and streams.

A :class:`Stream` is what a continual learner faces: an ordered list of experiences, each with its
own private train and test split, the global label space, and (for multi-task streams) task labels.
In the ex-model setting the train splits are used only to train the experts (and by the data-based
reference strategies); ex-model strategies never see them.
"""

from __future__ import annotations

from dataclasses import dataclass

from exmodel.data.types import ImageDataset


@dataclass(frozen=True)
class Experience:
    index: int
    classes: tuple[int, ...]  # global class ids present in this experience
    task_id: int  # the experience's task label (in NC it equals the index; used only by task-aware parts)
    train: ImageDataset
    test: ImageDataset


@dataclass(frozen=True)
class Stream:
    name: str  # e.g. "split_mnist_nc"
    kind: str  # nc | ni | mt | joint | cil
    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    experiences: tuple[Experience, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self):
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    @property
    def multi_task(self) -> bool:
        return self.kind == "mt"

    @property
    def task_classes(self) -> list[list[int]]:
        """Classes of each task, indexed by task id (what task-aware evaluation restricts to)."""
        out: dict[int, list[int]] = {}
        for e in self.experiences:
            out.setdefault(e.task_id, [])
            out[e.task_id] = sorted(set(out[e.task_id]) | set(e.classes))
        return [out[t] for t in sorted(out)]

    def describe(self) -> str:
        parts = [f"{e.index}:{list(e.classes)} ({len(e.train)}/{len(e.test)})" for e in self.experiences]
        return f"{self.name} [{self.kind}] " + " ".join(parts)
