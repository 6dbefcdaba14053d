"""Param. Avg. (Carta et al. 2021, Sec. 5): one model whose parameters are the experts' average.

The only baseline that respects the ex-model constraints: it keeps a single model, updated as a
running mean θ̄_i = θ̄_{i-1} + (θ_i − θ̄_{i-1}) / i, so its state does not grow with the number of
experts. BatchNorm running statistics are averaged the same way.

Experts must share one architecture. With one output layout (``head: full``) everything is averaged.
In multi-task streams, where each expert has its own task head, the feature extractor is averaged and
each task keeps its expert's head (a multi-head model; heads are tiny next to the backbone).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from exmodel.errors import ExmodelError
from exmodel.experts.expert import to_global
from exmodel.strategies.base import Step, Strategy, register_strategy


def running_average_(avg: dict[str, torch.Tensor], new: dict[str, torch.Tensor], count: int,
                     skip: tuple[str, ...] = ()) -> None:
    """In place: avg ← avg + (new − avg) / count for floating tensors; integer buffers take ``new``."""
    for k, v in new.items():
        if k.startswith(skip):
            continue
        if v.is_floating_point():
            avg[k] += (v.to(avg[k].dtype) - avg[k]) / count
        else:
            avg[k].copy_(v)


def _head_of(net: nn.Module) -> nn.Linear:
    return copy.deepcopy(net.head)


@register_strategy("param_avg")
class ParamAvg(Strategy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model = None
        self.count = 0
        self.heads = nn.ModuleDict()  # multi-task: task id -> that task's head
        self.head_classes: dict[int, list[int]] = {}

    def observe(self, step: Step, expert, data, progress=None) -> None:
        self.count += 1
        per_task = self.info.kind == "mt"
        if per_task:
            self.heads[str(step.task_id)] = _head_of(expert.net).to(self.device)
            self.head_classes[step.task_id] = list(expert.card.class_ids)
        if self.model is None:
            self.model = copy.deepcopy(expert).to(self.device).eval()
            return
        a, b = self.model.card, expert.card
        same_arch = a.arch == b.arch and {**a.arch_kwargs, "num_classes": 0} == {**b.arch_kwargs, "num_classes": 0}
        if not same_arch or (not per_task and a.class_ids != b.class_ids):
            raise ExmodelError(f"param_avg needs experts with the same architecture and outputs; expert {step.index} "
                               f"({b.arch}, classes {b.class_ids}) differs from the first ({a.arch}, classes {a.class_ids})")
        with torch.no_grad():
            running_average_(self.model.net.state_dict(), expert.net.state_dict(), self.count,
                             skip=("head.",) if per_task else ())

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        if self.info.kind != "mt":
            return self.model.global_logits(x01, fill=float("-inf"))
        feats = self.model.net.forward_features(self.model.normalize(x01))
        out = torch.full((len(x01), self.info.num_classes), float("-inf"), device=x01.device)
        for t in task_ids.unique().tolist():
            if str(t) in self.heads:
                rows = (task_ids == t).nonzero().squeeze(1)
                out[rows] = to_global(self.heads[str(t)](feats[rows]), self.head_classes[t], self.info.num_classes)
        return out

    def state(self):
        return {"model": self.model, "heads": self.heads}
