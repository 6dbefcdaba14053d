"""How much each parameter matters to what was learnt: the Ω of the quadratic-penalty baselines.

* :func:`fisher_diagonal` — EWC (Kirkpatrick et al. 2017): the diagonal of the Fisher information,
  ``E_x[(∂ log p(ŷ|x) / ∂θ)²]`` with ``ŷ`` the model's own prediction (van de Ven et al.'s choice),
  from per-sample gradients;
* :func:`output_sensitivity` — MAS (Aljundi et al. 2018, Eq. 4): ``E_x[|∂ ‖f(x)‖²₂ / ∂θ|]``, label-free;
* :class:`PathIntegral` — SI (Zenke et al. 2017, Eq. 4-5): ``ω += −g · Δθ`` along the optimisation
  path, turned into ``Ω = ω / (Δθ_task² + ξ)`` at the end of the task.

Per-sample gradients come from ``torch.func`` (``vmap`` over ``grad``) with the model in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from exmodel.data.types import ImageDataset


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _per_sample_mean(model: nn.Module, data: ImageDataset, per_sample: Callable, max_samples: int | None,
                     batch_size: int, device: str, generator: torch.Generator, absolute: bool) -> dict[str, torch.Tensor]:
    """``mean_x f(∂ per_sample(θ, x) / ∂θ)`` with f = square (``absolute`` False) or |·|."""
    model.eval()
    params = {n: p.detach() for n, p in trainable(model).items()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    n = len(data)
    index = torch.randperm(n, generator=generator)[:max_samples] if max_samples and max_samples < n else torch.arange(n)

    def one(p, x):
        return per_sample(lambda inp: functional_call(model, (p, buffers), (inp.unsqueeze(0),)), x)

    grads_of = vmap(grad(one), in_dims=(None, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, len(index), batch_size):
        x = data.float_images(index[start:start + batch_size]).to(device)
        for k, g in grads_of(params, x).items():
            total[k] += (g.abs() if absolute else g.pow(2)).sum(0)
    return {k: v / max(1, len(index)) for k, v in total.items()}


def fisher_diagonal(model: nn.Module, data: ImageDataset, *, max_samples: int | None = None, batch_size: int = 256,
                    device: str = "cpu", generator: torch.Generator,
                    logit_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Empirical-prediction Fisher diagonal over (up to ``max_samples`` of) ``data``; ``logit_mask``
    limits the softmax to the classes seen so far."""

    def log_p_predicted(forward, x):
        logits = forward(x)[0]
        if logit_mask is not None:
            logits = logits.masked_fill(~logit_mask, float("-inf"))
        return torch.log_softmax(logits, dim=0).max()  # log p(ŷ|x) for the predicted class ŷ

    return _per_sample_mean(model, data, log_p_predicted, max_samples, batch_size, device, generator, absolute=False)


def output_sensitivity(model: nn.Module, data: ImageDataset, *, max_samples: int | None = None, batch_size: int = 256,
                       device: str = "cpu", generator: torch.Generator,
                       logit_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """MAS importance: mean absolute gradient of the squared L2 norm of the (seen classes') outputs."""

    def squared_norm(forward, x):
        out = forward(x)[0]
        if logit_mask is not None:
            out = out[logit_mask]
        return out.pow(2).sum()

    return _per_sample_mean(model, data, squared_norm, max_samples, batch_size, device, generator, absolute=True)


class PathIntegral:
    """SI's running importance: call :meth:`start` before a task, :meth:`step` after every optimiser
    step (gradients in place), :meth:`finish` after the task; :attr:`omega` holds Ω over all tasks."""

    def __init__(self, model: nn.Module, damping: float) -> None:
        self.damping = damping
        self.omega = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
        self._w: dict[str, torch.Tensor] = {}
        self._start: dict[str, torch.Tensor] = {}
        self._prev: dict[str, torch.Tensor] = {}

    def start(self, model: nn.Module) -> None:
        self._start = {n: p.detach().clone() for n, p in trainable(model).items()}
        self._prev = {n: v.clone() for n, v in self._start.items()}
        self._w = {n: torch.zeros_like(v) for n, v in self._start.items()}

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        for n, p in trainable(model).items():
            if p.grad is not None:
                self._w[n] -= p.grad * (p.detach() - self._prev[n])
            self._prev[n] = p.detach().clone()

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        for n, p in trainable(model).items():
            delta = p.detach() - self._start[n]
            self.omega[n] += self._w[n] / (delta ** 2 + self.damping)
