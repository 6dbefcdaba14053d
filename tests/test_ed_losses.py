"""Eq. 6-11 of the ex-model paper and the buffer of Algorithm 1, checked by hand."""

import math

import pytest
import torch

from exmodel.strategies.ed.buffer import Buffer, class_balanced_subsample, new_samples_per_step
from exmodel.strategies.ed.losses import ed_loss, ed_targets, masked_mse, normalize_logits

NAN = float("nan")


def test_standardize_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mean 3, population variance (4+1+0+9)/4 = 3.5
    s = math.sqrt(3.5)
    assert torch.allclose(normalize_logits(z), torch.tensor([[-2 / s, -1 / s, 0.0, 3 / s]]), atol=1e-5)


def test_normalization_removes_scale_and_shift():
    z = torch.randn(3, 10)
    for mode in ("standardize", "l2"):
        assert torch.allclose(normalize_logits(5 * z + 7, mode), normalize_logits(z, mode), atol=1e-4)


def test_l2_and_none_and_nan_units():
    z = torch.tensor([[1.0, 3.0, NAN]])  # centered over the two valid units: (-1, 1); norm sqrt 2
    out = normalize_logits(z, "l2")
    assert torch.allclose(out[0, :2], torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2)]), atol=1e-5)
    assert math.isnan(out[0, 2])
    assert torch.equal(normalize_logits(z[:, :2], "none"), z[:, :2])
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_logits(z, "softmax")


def test_targets_follow_eq9():
    prev = torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 3)
    exp = torch.tensor([[0.0, 0.0, 0.0, 8.0]] * 3)
    y = torch.tensor([0, 3, 1])
    prev_cls = torch.tensor([True, True, False, False])
    exp_cls = torch.tensor([False, True, False, True])
    t = ed_targets(prev, exp, y, prev_cls, exp_cls)
    yp, ys = normalize_logits(prev), normalize_logits(exp)
    assert torch.allclose(t[0], yp[0])  # class 0: only the previous model knows it
    assert torch.allclose(t[1], ys[1])  # class 3: only the expert
    assert torch.allclose(t[2], (yp[2] + ys[2]) / 2)  # class 1: both -> mean
    assert torch.allclose(ed_targets(None, exp, y, prev_cls, exp_cls), ys)  # first expert: no previous model


def test_local_head_expert_leaves_other_units_to_previous_model():
    prev = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    exp = torch.tensor([[NAN, 5.0, 1.0, NAN]])  # the expert has units for classes 1 and 2 only
    t = ed_targets(prev, exp, torch.tensor([1]), torch.tensor([True, True, False, False]),
                   torch.tensor([False, True, True, False]))
    yp, ys = normalize_logits(prev), normalize_logits(exp)
    assert torch.allclose(t[0, [0, 3]], yp[0, [0, 3]])
    assert torch.allclose(t[0, [1, 2]], (yp[0, [1, 2]] + ys[0, [1, 2]]) / 2)


def test_masked_mse_and_ed_loss_by_hand():
    pred = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, NAN], [1.0, 1.0, 1.0]])
    assert masked_mse(pred, target).item() == pytest.approx((1 + 4 + 3) / 2)
    y = torch.tensor([1, 2])
    ce = -(torch.log_softmax(pred, 1)[0, 1] + torch.log_softmax(pred, 1)[1, 2]) / 2
    total, mse, ce_out = ed_loss(pred, target, y, lambda_ce=0.5)
    assert ce_out.item() == pytest.approx(ce.item(), rel=1e-6)
    assert total.item() == pytest.approx(4.0 + 0.5 * ce.item(), rel=1e-6)


def test_ed_loss_label_smoothing_by_hand():
    pred = torch.tensor([[1.0, 2.0, 0.0]])
    logp = torch.log_softmax(pred, 1)[0]
    eps = 0.3  # target: 1 − ε + ε/3 on the label, ε/3 elsewhere
    want = -((1 - eps + eps / 3) * logp[1] + eps / 3 * (logp[0] + logp[2]))
    _, _, ce = ed_loss(pred, torch.zeros(1, 3), torch.tensor([1]), lambda_ce=1.0, label_smoothing=eps)
    assert ce.item() == pytest.approx(want.item(), rel=1e-6)


def test_new_samples_per_step_is_floor_n_over_i():
    assert [new_samples_per_step(5000, s) for s in range(5)] == [5000, 2500, 1666, 1250, 1000]


def test_class_balanced_subsample():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    idx = class_balanced_subsample(labels, 12, g)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [5, 5, 2]  # class 2 has only 2; its surplus goes to the others
    assert len(set(idx.tolist())) == 12
    idx = class_balanced_subsample(labels, 7, g)
    assert sorted(torch.bincount(labels[idx], minlength=3).tolist()) == [2, 2, 3]


def test_buffer_size_never_exceeds_capacity_and_balances():
    g = torch.Generator().manual_seed(0)
    buf = Buffer(100)
    for step in range(10):
        n = new_samples_per_step(100, step)
        x = torch.rand(n, 1, 2, 2)
        buf.update(step, x, torch.full((n,), step), g)
        assert len(buf) <= 100
    counts = torch.bincount(buf.labels, minlength=10).tolist()
    assert len(buf) == 100 and max(counts) - min(counts) <= 1
    assert buf.images.dtype == torch.uint8
    x = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    b = Buffer(4)
    b.update(0, x, torch.tensor([0]), g)
    assert torch.allclose(b.float_images(torch.tensor([0])), torch.round(x * 255) / 255)
