"""The BN-free realism prior of the generative source: its loss terms by hand, and which prior the
generator picks for an expert with and without BatchNorm (``prior: auto``)."""

from __future__ import annotations

import math

import pytest
import torch

from exmodel.errors import ConfigError
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.synthesis import build_source
from exmodel.synthesis.priors import (BNStatsRecorder, activation_loss, bn_statistics_loss, entropy_balance_loss,
                                      input_moments_loss)


# ------------------------------------------------------------------------------------------ the loss terms
def test_input_moments_loss_by_hand():
    # channel 0: values 0, 1, 2, 3 -> mean 1.5, biased var 1.25; channel 1: all 1 -> mean 1, std 0
    x = torch.zeros(2, 2, 1, 2)
    x[0, 0, 0] = torch.tensor([0.0, 1.0])
    x[1, 0, 0] = torch.tensor([2.0, 3.0])
    x[:, 1] = 1.0
    eps = 1e-8  # BN_STD_EPS, added to the variance under the square root
    want = (1.5 ** 2 + (math.sqrt(1.25 + eps) - 1) ** 2) + (1.0 ** 2 + (math.sqrt(eps) - 1) ** 2)
    assert input_moments_loss(x).item() == pytest.approx(want, abs=1e-5)


def test_input_moments_loss_is_the_bn_term_of_a_standardising_layer():
    x = torch.randn(6, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    dims = (0, 2, 3)
    stats = [(x.mean(dims), x.var(dims, unbiased=False), torch.zeros(3), torch.ones(3))]
    assert input_moments_loss(x).item() == pytest.approx(bn_statistics_loss(stats).item(), rel=1e-6)
    # zero for data with exactly mean 0 and std 1 per channel, and differentiable
    z = (x - x.mean(dims, keepdim=True)) / x.std(dims, unbiased=False, keepdim=True)
    assert input_moments_loss(z).item() == pytest.approx(0.0, abs=1e-6)
    xr = x.clone().requires_grad_(True)
    input_moments_loss(xr).backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_input_moments_loss_has_a_finite_gradient_on_a_constant_batch():
    x = torch.full((4, 1, 3, 3), 0.2, requires_grad=True)
    loss = input_moments_loss(x)
    assert loss.item() == pytest.approx(0.2 ** 2 + (1e-4 - 1.0) ** 2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_activation_loss_by_hand():
    f = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -0.5]])
    assert activation_loss(f).item() == pytest.approx(-(1 + 2 + 0 + 3 + 0.5 + 0.5) / 6)
    with pytest.raises(ValueError, match=r"expected features shaped \(B, D\)"):
        activation_loss(torch.zeros(2, 3, 4))


def test_entropy_balance_loss_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # mean (0.75, 0.25)
    want = 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
    assert entropy_balance_loss(p).item() == pytest.approx(want)
    assert entropy_balance_loss(torch.full((3, 4), 0.25)).item() == pytest.approx(-math.log(4))
    assert entropy_balance_loss(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0)  # no NaN at 0
    with pytest.raises(ValueError, match=r"expected probabilities shaped \(B, K\)"):
        entropy_balance_loss(torch.zeros(3))


# ------------------------------------------------------------------------------------------ the generator
def _expert(arch: str) -> Expert:
    """An untrained 10-way LeNet (with or without BN) standing in for an expert of classes 3 and 7;
    the BN layers get non-trivial running statistics so that the BN term is not zero."""
    torch.manual_seed(0)
    net = build_model(arch, num_classes=10, in_channels=1, input_size=28)
    card = ExpertCard(name=f"test-{arch}", arch=arch, arch_kwargs=dict(net.arch_kwargs), class_ids=list(range(10)),
                      class_names=[str(c) for c in range(10)], trained_class_ids=[3, 7], num_global_classes=10,
                      input_shape=(1, 28, 28), normalization={"mean": [0.1307], "std": [0.3081]})
    e = Expert(card, net)
    for m in BNStatsRecorder(net).layers:
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    return e.eval()


FAST = {"steps": 4, "batch_size": 8, "relabel": False, "w_bn": 0.3, "w_div": 1.5}


def _draw(expert: Expert, **params) -> torch.Tensor:
    x, _ = build_source("generative", {**FAST, **params}).generate(expert, 12, torch.Generator().manual_seed(3))
    return x


def test_auto_prior_is_the_bn_prior_for_an_expert_with_batchnorm(monkeypatch):
    """For an expert with BN layers, ``auto`` is exactly today's generator: the BN term, and none
    of the BN-free terms (whatever their weights)."""
    import exmodel.synthesis.generative as generative

    expert = _expert("lenet_bn")
    bn = _draw(expert, prior="bn")
    monkeypatch.setattr(generative, "bn_free_terms", lambda *a, **k: pytest.fail("BN-free prior used"))
    assert torch.equal(_draw(expert), bn)
    assert torch.equal(_draw(expert, prior="auto", w_input=5.0, w_act=2.0), bn)
    monkeypatch.undo()
    assert not torch.equal(_draw(expert, prior="none"), bn)  # the BN term does change the images
    assert not torch.equal(_draw(expert, prior="bn_free"), bn)  # and the BN-free prior can be forced


def test_auto_prior_is_the_bn_free_prior_for_an_expert_without_batchnorm():
    expert = _expert("lenet")
    auto = _draw(expert)
    assert torch.equal(auto, _draw(expert, prior="bn_free"))
    none = _draw(expert, prior="none")
    assert torch.equal(none, _draw(expert, prior="bn"))  # no BN layers: the BN prior has nothing to match
    assert not torch.equal(auto, none)
    # with both BN-free weights at 0 the BN-free prior adds nothing
    assert torch.equal(_draw(expert, w_input=0.0, w_act=0.0), none)
    # each term alone changes the images
    assert not torch.equal(_draw(expert, w_input=0.0), none)
    assert not torch.equal(_draw(expert, w_act=0.0), none)


def test_bn_free_terms_add_the_weighted_losses_by_hand():
    from exmodel.synthesis.generative import GenerativeParams, bn_free_terms

    xn = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    feats = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    p = GenerativeParams(w_input=0.5, w_act=0.2)
    want = 0.5 * input_moments_loss(xn) + 0.2 * activation_loss(feats)
    assert bn_free_terms(p, xn, feats).item() == pytest.approx(want.item())
    assert bn_free_terms(GenerativeParams(w_input=0.0, w_act=0.0), xn, feats) == 0.0


def test_prior_must_be_a_known_name():
    with pytest.raises(ConfigError, match="param prior: Input should be 'auto', 'bn', 'bn_free' or 'none'"):
        build_source("generative", {"prior": "deepinversion"})
