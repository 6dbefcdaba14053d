"""Beneficial biases (SKILL Eq. 1-2): one learnable bias per output channel of every convolution and
linear layer of a frozen network.

    conv:   y = Conv(x) + b + B,   B ∈ R^{c'}   (one value per kernel)
    linear: y = FC(x) + b + B,     B ∈ R^{l'}   (one value per unit)

The network's weights stay frozen and untouched: the biases are a separate set of tensors, added by
forward hooks only inside ``with biases.applied(model):``, so one backbone serves every task, each
with its own biases. The classifier of the network (``head`` / ``heads``) gets none: each LLL task
has its own head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def bias_sites(model: nn.Module, skip: tuple[str, ...] = ("head", "heads")) -> list[tuple[str, nn.Module, int]]:
    """``(name, layer, channels)`` of every Conv2d and Linear of ``model`` outside ``skip``, in module order."""
    out = []
    for name, m in model.named_modules():
        if name.split(".")[0] in skip:
            continue
        if isinstance(m, nn.Conv2d):
            out.append((name, m, m.out_channels))
        elif isinstance(m, nn.Linear):
            out.append((name, m, m.out_features))
    return out


class BeneficialBiases(nn.Module):
    """The biases of one task for one network (zeros: the network unchanged)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = [name for name, _, _ in bias_sites(model)]
        self.values = nn.ParameterList(nn.Parameter(torch.zeros(c)) for _, _, c in bias_sites(model))

    @property
    def count(self) -> int:
        return sum(v.numel() for v in self.values)

    def state(self) -> dict[str, torch.Tensor]:
        return {name: v.detach().clone() for name, v in zip(self.names, self.values)}

    def load(self, state: dict[str, torch.Tensor]) -> "BeneficialBiases":
        """Copy ``state`` in; its layers and sizes must be this network's."""
        if sorted(state) != sorted(self.names):
            missing = sorted(set(self.names) - set(state))
            extra = sorted(set(state) - set(self.names))
            raise ValueError(f"beneficial biases for other layers: {len(missing)} missing, {len(extra)} unexpected "
                             f"(e.g. {(missing or extra)[0]})")
        with torch.no_grad():
            for name, v in zip(self.names, self.values):
                if state[name].shape != v.shape:
                    raise ValueError(f"beneficial biases of {name}: {tuple(state[name].shape)}, expected {tuple(v.shape)}")
                v.copy_(state[name])
        return self

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with these biases added to its layers' outputs, for the duration of the block."""
        sites = bias_sites(model)
        if [name for name, _, _ in sites] != self.names:
            raise ValueError("these beneficial biases were made for another network")
        handles = []
        for (_, layer, _), b in zip(sites, self.values):
            shape = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (1, -1)
            handles.append(layer.register_forward_hook(lambda _m, _i, out, b=b, s=shape: out + b.view(s)))
        try:
            yield model
        finally:
            for h in handles:
                h.remove()
