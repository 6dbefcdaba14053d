"""Mixup, weight EMA and the lr schedule of the ED distillation loop, checked by hand."""

import math

import pytest
import torch
from torch import nn

from exmodel.errors import ExmodelError
from exmodel.strategies.ed_losses import ed_loss, mix_targets
from exmodel.strategies.ed_schedule import WeightEMA, mixup_inputs, soft_labels

NAN = float("nan")


def test_mixup_inputs_are_convex_combinations_with_a_partner():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)
    xm, perm, lam = mixup_inputs(x, 0.4, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(6)) and lam.shape == (6,)
    assert bool(((lam >= 0) & (lam <= 1)).all())
    assert torch.allclose(xm.view(-1), lam * x.view(-1) + (1 - lam) * x.view(-1)[perm])
    again = mixup_inputs(x, 0.4, torch.Generator().manual_seed(0))  # same generator state, same draw
    assert torch.equal(again[0], xm) and torch.equal(again[1], perm)
    with pytest.raises(ValueError, match="mixup alpha must be > 0"):
        mixup_inputs(x, 0.0, torch.Generator())


def test_mixup_lambda_follows_beta_alpha_alpha():
    _, _, lam = mixup_inputs(torch.zeros(20000, 1), 0.4, torch.Generator().manual_seed(1))
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)) = 1/7.2 for α = 0.4
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 1 / 7.2) < 0.005


def test_soft_labels_and_mixed_ce_by_hand():
    y = torch.tensor([0, 2])
    perm = torch.tensor([1, 0])
    lam = torch.tensor([0.75, 0.5])
    q = soft_labels(y, perm, lam, 3)
    assert torch.allclose(q, torch.tensor([[0.75, 0.0, 0.25], [0.5, 0.0, 0.5]]))
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    logp = torch.log_softmax(logits, 1)
    ce = -(0.75 * logp[0, 0] + 0.25 * logp[0, 2] + 0.5 * logp[1, 0] + 0.5 * logp[1, 2]) / 2
    _, _, got = ed_loss(logits, torch.zeros(2, 3), q, 1.0)
    assert math.isclose(got.item(), ce.item(), rel_tol=1e-5)


def test_mix_targets_by_hand_and_units_with_one_target():
    a = torch.tensor([[1.0, 2.0, NAN, NAN]])
    b = torch.tensor([[3.0, NAN, 5.0, NAN]])
    out = mix_targets(a, b, torch.tensor([0.25]))
    assert torch.allclose(out[0, :3], torch.tensor([0.25 * 1 + 0.75 * 3, 2.0, 5.0]))
    assert math.isnan(out[0, 3])


def test_weight_ema_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightEMA(model, 0.9)
    for w in (2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
    # 1 → 0.9·1 + 0.1·2 = 1.1 → 0.9·1.1 + 0.1·4 = 1.39
    ema.copy_to(model)
    assert math.isclose(model.weight.item(), 1.39, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"ema decay must be in \(0, 1\)"):
        WeightEMA(model, 1.0)


def test_ed_params_for_the_training_aids_are_checked():
    from exmodel.strategies import StreamInfo, build_strategy

    nc = StreamInfo("nc", 4, (1, 8, 8), (0.1,), (0.3,), ((0, 1), (2, 3)), 2)
    mt = StreamInfo("mt", 4, (1, 8, 8), (0.1,), (0.3,), ((0, 1), (2, 3)), 2)
    with pytest.raises(ExmodelError, match="lr_schedule must be one of constant, cosine"):
        build_strategy("noise_ed", {"lr_schedule": "step"}, nc, 0)
    with pytest.raises(ExmodelError, match="mixup mixes tasks; it is not available on multi-task streams"):
        build_strategy("noise_ed", {"mixup": 0.4}, mt, 0)
    assert build_strategy("noise_ed", {"mixup": 0.4, "ema": 0.99, "lr_schedule": "cosine"}, nc, 0).params.mixup == 0.4
