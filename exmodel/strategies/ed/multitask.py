"""Ex-Model Distillation on multi-task (MT) streams, where the task label is given at test time.

The ex-model keeps one shared head over the global label space; restricting every softmax to the
sample's task classes (:func:`task_class_masks`, used by the targets, the loss and prediction) makes
it one head per task, the multi-head classifier of the paper's CIFAR10-MT setting. Old tasks' heads
stay those of the previous ex-model; the new task's head is taken from the expert
(:func:`take_expert_head`), and at the first step, when the architectures agree, so is the whole
network: after one expert the ex-model *is* that expert. Distillation then aligns the shared trunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def task_class_masks(task_classes: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(K, K) bool: row ``c`` marks the classes of the task that class ``c`` belongs to."""
    masks = torch.zeros(num_classes, num_classes, dtype=torch.bool)
    for classes in task_classes:
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        if bool(masks[idx].any()):
            raise ValueError("task_class_masks: MT tasks must not share classes")
        masks[idx.view(-1, 1), idx.view(1, -1)] = True
    return masks


def _expert_head(net: nn.Module, task_id: int | None) -> nn.Linear | None:
    if getattr(net, "is_multihead", False):
        return net.heads[task_id] if task_id is not None and 0 <= task_id < len(net.heads) else None
    head = getattr(net, "head", None)
    return head if isinstance(head, nn.Linear) else None


@torch.no_grad()
def take_expert_head(model_net: nn.Module, expert, classes: Sequence[int], first: bool) -> int:
    """Copy the expert's output units for ``classes`` into the rows of ``model_net.head``; at the
    ``first`` step also copy its trunk when every trunk tensor has the same shape. Returns the number
    of head rows copied (0 when the expert has no plain linear head of the ex-model's width)."""
    head = _expert_head(expert.net, expert.card.task_id)
    if head is None or head.in_features != model_net.head.in_features:
        return 0
    if first:
        ours = {k: v for k, v in model_net.state_dict().items() if not k.startswith(("head.", "heads."))}
        theirs = {k: v for k, v in expert.net.state_dict().items() if not k.startswith(("head.", "heads."))}
        if ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours):
            for k, v in theirs.items():
                ours[k].copy_(v)
    local = {int(c): i for i, c in enumerate(expert.card.class_ids)}
    rows = [(int(c), local[int(c)]) for c in classes if int(c) in local]
    for glob, loc in rows:
        model_net.head.weight[glob] = head.weight[loc]
        model_net.head.bias[glob] = head.bias[loc]
    return len(rows)
