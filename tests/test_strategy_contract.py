"""The contract every registered strategy keeps, checked on tiny synthetic inputs.

Two steps of a class-incremental stream (4 classes, 2 per step, 28×28 images): after each step
``predict`` gives scores of shape (B, K), no NaN and a finite score in every row (the oracle rules out
other tasks' classes with -inf); ``state()`` can be measured; the same seed gives the
same predictions, whatever draws from torch's global generator before and between the steps, and
a step leaves that generator as it found it. Budgets are cut to a few iterations: this checks the interface, not accuracy.
"""

from __future__ import annotations

import pytest
import torch

from exmodel.data.types import ImageDataset
from exmodel.evaluation import state_bytes
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.strategies.cil import IncrementalLearner
from exmodel.strategies import Step, StreamInfo, build_strategy, list_strategies, strategy_class
from exmodel.synthesis import source_class

K, SHAPE = 4, (1, 28, 28)  # the auxiliary source's embedded pool is 28×28
INFO = StreamInfo(kind="nc", num_classes=K, input_shape=SHAPE, mean=(0.5,), std=(0.5,),
                  task_classes=((0, 1), (2, 3)), n_experiences=2)
TINY_ED = {"iterations": 2, "buffer_size": 16, "batch_size": 8, "check_samples": 0, "arch": "mlp",
           "arch_kwargs": {"hidden": [8]}}
TINY_SOURCE = {"steps": 2, "epochs": 2, "batch_size": 4}


def _expert(classes: tuple[int, int], seed: int) -> Expert:
    torch.manual_seed(seed)
    net = build_model("mlp", num_classes=K, in_channels=1, input_size=28, hidden=[8])
    card = ExpertCard(name=f"e{seed}", arch="mlp", arch_kwargs=dict(net.arch_kwargs), class_ids=list(range(K)),
                      class_names=[str(c) for c in range(K)], trained_class_ids=list(classes), num_global_classes=K,
                      input_shape=SHAPE, normalization={"mean": [0.5], "std": [0.5]}, experience=seed)
    return Expert(card, net).eval()


def _data(classes: tuple[int, int], seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat(8)
    images = (torch.rand(len(labels), *SHAPE, generator=g) * 255).to(torch.uint8)
    return ImageDataset(images, labels, [str(c) for c in range(K)], "tiny", (0.5,), (0.5,))


def _params(name: str) -> dict:
    cls = strategy_class(name)
    fields = cls.Params.model_fields
    if issubclass(cls, IncrementalLearner):  # class-incremental from data: a few steps, a tiny memory
        return {"iterations": 2, "batch_size": 8, "arch": "mlp", "arch_kwargs": {"hidden": [8]},
                **({"memory_size": 4} if "memory_size" in fields else {}),
                **({"delegator_epochs": 1, "finetune_epochs": 1, "width": 4, "z_dim": 8, "delegator_batch": 4}
                   if "delegator_epochs" in fields else {}),
                **({"delegator_params": {"delegator_epochs": 1, "finetune_epochs": 1, "width": 4, "z_dim": 8,
                                         "delegator_batch": 4}} if "delegator_params" in fields else {})}
    if "iterations" in fields:  # Ex-Model Distillation: tiny budgets for the preset's own source
        accepted = source_class(cls.Params().source).Params.model_fields
        return {**TINY_ED, "source_params": {k: v for k, v in TINY_SOURCE.items() if k in accepted}}
    if "epochs" in fields:
        return {"epochs": 1, "batch_size": 8, "arch": "mlp", "arch_kwargs": {"hidden": [8]}}
    return {}


def _run(name: str, seed: int, disturb: bool = False) -> list[torch.Tensor]:
    if disturb:
        torch.manual_seed(1234)
    strategy = build_strategy(name, _params(name), INFO, seed)
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(99))
    out = []
    for i, classes in enumerate(INFO.task_classes):
        expert = _expert(classes, i) if "expert" in strategy.consumes else None
        data = _data(classes, i) if "data" in strategy.consumes else None
        if disturb:  # someone else draws from the global generator between the steps
            torch.rand(100 + i)
        outside = torch.get_rng_state()
        strategy.observe(Step(i, i, classes), expert, data)
        assert torch.equal(torch.get_rng_state(), outside), f"{name}: observe moved the global generator"
        with torch.no_grad():
            scores = strategy.predict(x, torch.zeros(6, dtype=torch.long))
        assert scores.shape == (6, K), (name, scores.shape)
        assert not scores.isnan().any() and torch.isfinite(scores).any(1).all(), name
        assert state_bytes(strategy.state()) > 0
        out.append(scores)
    return out


@pytest.mark.parametrize("name", list_strategies())
def test_strategy_contract(name):
    first = _run(name, seed=3)
    again = _run(name, seed=3, disturb=True)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, msg=f"{name}: the same seed gave different predictions")
