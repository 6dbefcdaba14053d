"""Ex-Model Distillation (Carta et al. 2021): the strategy (``strategy.py``, Algorithm 1), its loss
(``losses.py``, Eq. 6-11), its buffer (``buffer.py``, Eq. 5), the multi-head variant for multi-task
streams (``multitask.py``), its parameters (``params.py``) and the named presets (``presets.py``).
Importing this package registers one strategy per preset.

The rest of exmodel uses ED through the functions below, never through the strategy's attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exmodel.strategies.base import Step, StreamInfo, build_strategy, register_strategy, strategy_class
from exmodel.strategies.ed.params import EDParams
from exmodel.strategies.ed.presets import PRESETS
from exmodel.strategies.ed.strategy import ExModelDistillation, strategy_for_preset

for _name, _preset in PRESETS.items():
    register_strategy(_name)(strategy_for_preset(_name, _preset))


def is_ed(name: str) -> bool:
    """Whether the registered strategy ``name`` is Ex-Model Distillation."""
    return issubclass(strategy_class(name), ExModelDistillation)


def preset_params(name: str) -> EDParams:
    """The full parameters of ED strategy ``name`` as its preset sets them."""
    if not is_ed(name):
        raise ValueError(f"strategy '{name}' is not Ex-Model Distillation")
    return strategy_class(name).Params()


def preset_source(name: str, overrides: dict[str, Any] | None = None, data_dir: str | None = None):
    """The knowledge source of ED strategy ``name``'s preset, its settings updated by ``overrides``."""
    from exmodel.synthesis import build_source

    p = preset_params(name)
    return build_source(p.source, {**p.source_params, **(overrides or {})}, data_dir=data_dir)


def distill_experts(name: str, experts: Sequence, info: StreamInfo, params: dict[str, Any], seed: int,
                    device: str = "cpu", progress=None) -> tuple[torch.nn.Module, dict[str, Any], list]:
    """Run ED strategy ``name`` over ``experts`` in order (one step each) and return the distilled
    model (on the CPU, in eval mode), the parameters it ran with, and the agreement samples (see
    :meth:`ExModelDistillation.agreement_samples`)."""
    strategy = build_strategy(name, params, info, seed, device)
    bar = progress.add(f"expert 1 of {len(experts)}", total=len(experts)) if progress is not None else None
    for i, e in enumerate(experts):
        if bar is not None:
            progress.update(bar, description=f"expert {i + 1} of {len(experts)}: {e.card.name}")
        strategy.observe(Step(i, i, tuple(e.card.trained_class_ids)), e, None, progress=progress)
        if bar is not None:
            progress.advance(bar)
    if bar is not None:
        progress.remove(bar)
    return strategy.model.cpu().eval(), strategy.params.model_dump(), strategy.agreement_samples()


__all__ = ["EDParams", "ExModelDistillation", "PRESETS", "distill_experts", "is_ed", "preset_params", "preset_source"]
