"""The model a strategy trains itself: a registered architecture over the global label space.

It wraps an architecture from the registry with the stream's normalization, so it takes [0, 1]
images like every expert does. In multi-task streams the softmax is restricted to the task's classes
both in training and in prediction, which makes one shared head behave as one head per task.

What the next families of methods need from it:

* ``forward_features`` / ``forward_head``: the trunk's feature vector and the head on top of it
  (feature-level distillation, auxiliary classifiers, prototypes);
* task heads keyed by task id (:meth:`add_head`, ``forward(x, task_id=...)``), beside the global head;
* :meth:`as_expert`: the learner as a teacher that every knowledge source and loss accepts (SKD's
  delegator learns from the *previous learner*, not from a received expert).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn

from exmodel.models import build_model
from exmodel.strategies.base import StreamInfo


class Learner(nn.Module):
    def __init__(self, info: StreamInfo, arch: str, arch_kwargs: dict | None = None) -> None:
        super().__init__()
        c, h, _ = info.input_shape
        self.arch = arch
        self.input_shape = tuple(info.input_shape)
        self.num_classes = info.num_classes
        self.net = build_model(arch, **{"in_channels": c, "input_size": h, **(arch_kwargs or {}),
                                        "num_classes": info.num_classes})
        self.register_buffer("mean", torch.tensor(info.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info.std).view(1, -1, 1, 1))
        self.task_heads = nn.ModuleDict()  # str(task id) -> Linear(features, that task's classes)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def forward_features(self, x01: torch.Tensor) -> torch.Tensor:
        """The trunk's feature vector, ``(B, net.num_features)``, for images in [0, 1]."""
        return self.net.forward_features(self.normalize(x01))

    def forward_head(self, features: torch.Tensor, task_id: Hashable | None = None) -> torch.Tensor:
        """The global head's logits ``(B, num_classes)``, or task ``task_id``'s head's."""
        if task_id is None:
            return self.net.forward_head(features)
        key = str(task_id)
        if key not in self.task_heads:
            raise KeyError(f"no head for task {task_id!r}; the learner has heads for {sorted(self.task_heads)}")
        return self.task_heads[key](features)

    def forward(self, x01: torch.Tensor, task_id: Hashable | None = None) -> torch.Tensor:
        if task_id is None:
            return self.net(self.normalize(x01))
        return self.forward_head(self.forward_features(x01), task_id)

    def add_head(self, task_id: Hashable, num_outputs: int) -> nn.Linear:
        """A new linear head for task ``task_id`` on the trunk's features (an error if it exists)."""
        key = str(task_id)
        if key in self.task_heads:
            raise ValueError(f"task {task_id!r} already has a head")
        if num_outputs < 1:
            raise ValueError(f"a head needs at least one output, got {num_outputs}")
        head = nn.Linear(self.net.num_features, int(num_outputs)).to(self.mean.device)
        self.task_heads[key] = head
        return head

    def task_mask(self, info: StreamInfo, classes) -> torch.Tensor | None:
        if info.kind != "mt":
            return None
        mask = torch.zeros(info.num_classes, dtype=torch.bool)
        mask[list(classes)] = True
        return mask

    def as_expert(self, trained_classes: Sequence[int], *, class_names: Sequence[str] | None = None,
                  name: str = "learner", training: dict | None = None, **card_fields):
        """The learner's global head as an :class:`~exmodel.experts.expert.Expert`, sharing its weights:
        a teacher for the knowledge sources and losses, or a model to save as a bundle.
        ``trained_classes`` are the classes it has learnt (a source draws samples of those)."""
        from exmodel.experts.card import ExpertCard
        from exmodel.experts.expert import Expert

        k = self.num_classes
        card = ExpertCard(
            name=name, arch=self.arch, arch_kwargs=dict(self.net.arch_kwargs), class_ids=list(range(k)),
            class_names=list(class_names) if class_names is not None else [str(c) for c in range(k)],
            trained_class_ids=sorted(int(c) for c in trained_classes), num_global_classes=k, task_id=None,
            input_shape=self.input_shape,
            normalization={"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()},
            training=dict(training or {}), **card_fields)
        return Expert(card, self.net)
