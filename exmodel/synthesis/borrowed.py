"""Borrowed statistics: an expert without BatchNorm judged by the BatchNorm layers of its peers.

Generator inversion keeps its images realistic by matching the expert's BatchNorm statistics
(DeepInversion). An expert without BatchNorm (a plain MLP, a LeNet) records nothing about its
training data, and its generator drifts to textures the expert accepts but no real image has; the
consolidated model then learns that expert's classes *as textures* and loses them on real images.

When experts are consolidated together (``exmodel consolidate``), the others are at hand. Experts
that take the same kind of input and have BatchNorm layers carry the statistics of images of that
domain (MNIST digits have the same strokes whichever digits an expert saw). :func:`borrow_statistics`
wraps a BN-free expert so that, while a generator is trained against it, the same images also run
through those reference experts (each with its own normalization and resolution) and their BatchNorm
layers are the ones the knowledge source matches. Everything else — logits, features, the targets of
distillation — is the expert's own. The references run only when gradients are enabled (generator
training), not in the no-grad passes of labelling and distillation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exmodel.experts.expert import Expert
from exmodel.synthesis.base import fit_input


def bn_layers_of(expert: Expert) -> list[tuple[str, _BatchNorm]]:
    """The expert's BatchNorm layers that keep running statistics."""
    net = expert.net
    layers = net.bn_layers() if hasattr(net, "bn_layers") else [
        (n, m) for n, m in net.named_modules() if isinstance(m, _BatchNorm)]
    return [(n, m) for n, m in layers if m.running_mean is not None]


class BorrowedStatistics(nn.Module):
    """The network of ``expert`` whose ``bn_layers()`` are those of ``references``; see the module docstring."""

    borrowed = True  # the generator matches these statistics class by class (GenerativeParams.bn_groups)

    def __init__(self, expert: Expert, references: Sequence[Expert]) -> None:
        super().__init__()
        self.inner = expert.net
        self.register_buffer("in_mean", expert.mean.clone(), persistent=False)
        self.register_buffer("in_std", expert.std.clone(), persistent=False)
        self.references = nn.ModuleList(references)
        self.arch_name = getattr(self.inner, "arch_name", "")
        self.arch_kwargs = getattr(self.inner, "arch_kwargs", {})

    def bn_layers(self) -> list[tuple[str, _BatchNorm]]:
        return [(f"references.{i}.{name}", m) for i, r in enumerate(self.references) for name, m in bn_layers_of(r)]

    def _run_references(self, x: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        x01 = (x * self.in_std + self.in_mean).clamp(0, 1)
        for ref in self.references:
            ref(fit_input(x01, ref.card.input_shape))  # fills the references' BN hooks

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._run_references(x)
        return self.inner.forward_features(x)

    def forward_head(self, features: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.inner.forward_head(features, task_id)

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if hasattr(self.inner, "forward_features"):
            return self.forward_head(self.forward_features(x), task_id)
        self._run_references(x)
        return self.inner(x, task_id=task_id)


def borrow_statistics(experts: Sequence[Expert]) -> tuple[list[Expert], dict[str, list[str]]]:
    """Each BN-free expert wrapped with the BN experts of the same input channels as references;
    the others unchanged. Returns the experts and ``{borrower: [reference names]}``."""
    out, borrowed = [], {}
    for e in experts:
        refs = [r for r in experts if r is not e and bn_layers_of(r) and r.card.input_shape[0] == e.card.input_shape[0]]
        if bn_layers_of(e) or not refs or not hasattr(e.net, "forward_features"):
            out.append(e)
            continue
        out.append(Expert(e.card, BorrowedStatistics(e, refs)).eval())
        borrowed[e.card.name] = [r.card.name for r in refs]
    return out, borrowed
