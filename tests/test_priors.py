"""Natural-image priors and differentiable augmentation, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exmodel.errors import ConfigError
from exmodel.models import build_model
from exmodel.synthesis.augment import make_augmentation
from exmodel.synthesis.priors import (BNStatsRecorder, blur_prior, bn_statistics_loss, diversity_loss,
                                      gaussian_blur3x3, l2_prior, pixel_l1, total_variation)


def impulse(side: int = 3) -> torch.Tensor:
    x = torch.zeros(1, 1, side, side)
    x[0, 0, side // 2, side // 2] = 1.0
    return x


# ------------------------------------------------------------------------------------------ pixel priors
def test_l2_prior_is_mean_of_per_sample_squared_norms():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(2, 1, 1, 2)
    # sample 0: 1 + 4 = 5, sample 1: 9 + 16 = 25 -> mean 15
    assert l2_prior(x).item() == pytest.approx(15.0)


def test_blur_of_an_impulse_is_the_kernel():
    out = gaussian_blur3x3(impulse())
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    torch.testing.assert_close(out[0, 0], expected)


def test_blur_uses_replicate_padding_and_keeps_constants():
    # Zero padding would darken the corners of a constant image to 9/16; replicate keeps it.
    x = torch.full((2, 3, 4, 5), 0.7)
    torch.testing.assert_close(gaussian_blur3x3(x), x)


def test_blur_acts_per_channel():
    x = torch.cat([impulse(), torch.zeros(1, 1, 3, 3)], dim=1)
    out = gaussian_blur3x3(x)
    assert out[0, 1].abs().max().item() == 0.0
    assert out[0, 0, 1, 1].item() == pytest.approx(4 / 16)


def test_blur_prior_by_hand():
    # x - blur(x) for the impulse: centre 1 - 4/16, four edges -2/16, four corners -1/16.
    per_sample = (12 / 16) ** 2 + 4 * (2 / 16) ** 2 + 4 * (1 / 16) ** 2  # = 0.640625
    x = torch.cat([impulse(), torch.zeros(1, 1, 3, 3)])
    assert blur_prior(x).item() == pytest.approx(per_sample / 2)


def test_total_variation_by_hand():
    x = torch.tensor([[0.0, 1.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    # vertical |3-0| + |5-1| = 7, horizontal |1-0| + |5-3| = 3; second sample constant -> 0
    batch = torch.cat([x, torch.ones(1, 1, 2, 2)])
    assert total_variation(batch).item() == pytest.approx(5.0)


def test_priors_reject_non_image_input():
    with pytest.raises(ValueError, match=r"expected images shaped \(B, C, H, W\)"):
        total_variation(torch.zeros(3, 4))


# ------------------------------------------------------------------------------------------ BN statistics
def test_bn_statistics_loss_by_hand():
    layer1 = (torch.tensor([1.0, 2.0]), torch.tensor([4.0, 9.0]), torch.zeros(2), torch.ones(2))
    # means: 1 + 4 = 5; stds (2, 3) vs (1, 1): 1 + 4 = 5
    assert bn_statistics_loss([layer1]).item() == pytest.approx(10.0, abs=1e-5)
    layer2 = (torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.25]))
    # 0.25 + (1 - 0.5)^2 = 0.5
    assert bn_statistics_loss([layer1, layer2]).item() == pytest.approx(10.5, abs=1e-5)
    assert bn_statistics_loss([]).item() == 0.0
    # first_weight scales the first layer's term only: 3 * 10 + 0.5
    assert bn_statistics_loss([layer1, layer2], first_weight=3.0).item() == pytest.approx(30.5, abs=1e-5)


def test_pixel_l1_is_mean_of_per_sample_intensity_sums():
    x = torch.tensor([[0.0, 0.5, 1.0, 0.25], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    # sample 0: 1.75, sample 1: 0 -> mean 0.875
    assert pixel_l1(x).item() == pytest.approx(0.875)


def bn2d_model() -> nn.Module:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0]))
    return nn.Sequential(nn.Identity(), bn).eval()


def test_recorder_matches_hand_computed_bn_loss_and_removes_hooks():
    model = bn2d_model()
    # channel 0 holds 0, 2, 4, 6 (mean 3, biased var 5); channel 1 is all ones (mean 1, var 0)
    x = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]], [[[4.0, 6.0]], [[1.0, 1.0]]]], requires_grad=True)
    with BNStatsRecorder(model) as rec:
        model(x)
        loss = rec.loss()
        (mean, var, rm, rv), = rec.stats
    torch.testing.assert_close(mean, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(var, torch.tensor([5.0, 0.0]))
    expected = (1 - 3) ** 2 + (-1 - 1) ** 2 + (2 - math.sqrt(5)) ** 2 + (1 - 0) ** 2
    # sigma_syn of channel 1 is sqrt(0 + 1e-8) = 1e-4, not 0: the loss is off by about 2e-4
    assert loss.item() == pytest.approx(expected, abs=5e-4)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0
    assert len(model[1]._forward_hooks) == 0
    model(x)  # no hook left: nothing recorded
    assert len(rec.stats) == 1


def test_recorder_can_pause_and_handles_batchnorm1d():
    bn = nn.BatchNorm1d(1).eval()  # running mean 0, var 1
    with BNStatsRecorder(bn) as rec:
        bn(torch.tensor([[1.0], [3.0]]))  # mean 2, var 1 -> loss 4 + 0
        rec.enabled = False
        bn(torch.tensor([[10.0], [10.0]]))  # ignored
        assert rec.loss().item() == pytest.approx(4.0, abs=1e-5)


def test_recorder_with_groups_averages_the_bn_term_of_each_group():
    bn = nn.BatchNorm1d(1).eval()  # running mean 0, var 1
    x = torch.tensor([[1.0], [3.0], [-1.0], [-1.0]])
    with BNStatsRecorder(bn) as rec:
        rec.groups = torch.tensor([0, 0, 1, 1])
        bn(x)
        # group 0: mean 2, var 1 -> 4 + 0; group 1: mean -1, var 0 -> 1 + (1 - 1e-4)^2
        assert len(rec.group_stats()) == 2
        assert rec.loss().item() == pytest.approx((4.0 + 1.0 + (1 - 1e-4) ** 2) / 2, abs=1e-4)
        torch.testing.assert_close(rec.stats[0][0], torch.tensor([2.0]))  # .stats: the first group
        rec.groups = None
        bn(x)  # the whole batch: mean 0.5, var 2.75
        want = 0.25 + (math.sqrt(2.75) - 1) ** 2
        assert len(rec.group_stats()) == 1 and rec.loss().item() == pytest.approx(want, abs=1e-5)


def test_recorder_finds_every_bn_layer_of_an_exmodelnet():
    net = build_model("lenet_bn", num_classes=2)
    with BNStatsRecorder(net) as rec:
        net.eval()(torch.zeros(3, 1, 28, 28))
        assert len(rec) == 4 and len(rec.stats) == 4
    plain = build_model("lenet", num_classes=2)
    with BNStatsRecorder(plain) as rec:
        plain(torch.zeros(1, 1, 28, 28))
        assert len(rec) == 0 and rec.loss().item() == 0.0


# ------------------------------------------------------------------------------------------ diversity
def test_diversity_loss_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cosines: (0,1) = 0, (0,2) = (1,2) = 1/sqrt(2); mean over the three pairs
    assert diversity_loss(f).item() == pytest.approx(2 / math.sqrt(2) / 3, abs=1e-6)
    # only same-label pairs count: samples 0 and 1 (cosine 0)
    assert diversity_loss(f, torch.tensor([5, 5, 6])).item() == pytest.approx(0.0, abs=1e-7)
    assert diversity_loss(f, torch.tensor([0, 1, 2])).item() == 0.0


# ------------------------------------------------------------------------------------------ augmentation
def test_augmentation_passes_gradients_to_the_input():
    aug = make_augmentation(translate=0.1, degrees=10.0)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    out = aug(x)
    assert out.shape == x.shape
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0


def test_augmentation_is_reproducible_and_changes_images():
    aug = make_augmentation(translate=0.1, degrees=10.0, hflip=True)
    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    torch.testing.assert_close(a, b)
    assert (a - x).abs().max().item() > 1e-3


def test_augmentation_none_is_the_identity_and_bad_options_fail():
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(make_augmentation(kind="none")(x), x)
    assert torch.equal(make_augmentation(translate=0.0, degrees=0.0)(x), x)
    with pytest.raises(ConfigError, match="unknown kind 'flip'; allowed: affine, none"):
        make_augmentation(kind="flip")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"translate must be in \[0, 1\)"):
        make_augmentation(translate=1.5)


def test_dilate_and_erode_move_a_stroke_edge_by_one_pixel():
    from exmodel.synthesis.augment import dilate, erode

    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    want = torch.zeros(1, 1, 5, 5)
    want[0, 0, 1:4, 1:4] = 1.0
    assert torch.equal(dilate(x), want)
    assert torch.equal(erode(want), x)  # the 3×3 square erodes back to its centre
    assert torch.equal(erode(x), torch.zeros_like(x))


def test_gamma_stretch_by_hand():
    from exmodel.synthesis.augment import gamma_stretch

    x = torch.tensor([[[[0.25, 0.5]]], [[[0.0, 0.0]]]])
    out = gamma_stretch(x, torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(out[0], torch.tensor([[[0.0625 / 0.25, 1.0]]]))
    assert torch.equal(out[1], torch.zeros(1, 1, 2))  # a black image stays black


def test_style_jitter_is_reproducible_bounded_and_checks_its_options():
    from exmodel.synthesis.augment import StyleJitter

    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    jit = StyleJitter(morph=0.5, gamma=0.7, blur=0.3)
    torch.manual_seed(1)
    a = jit(x)
    torch.manual_seed(1)
    assert torch.equal(a, jit(x)) and a.shape == x.shape
    assert 0.0 <= a.min().item() and a.max().item() <= 1.0 + 1e-6
    assert (a - x).abs().flatten(1).amax(1).gt(1e-3).float().mean().item() > 0.9  # almost every image changed
    assert torch.equal(StyleJitter()(x), x)
    with pytest.raises(ConfigError, match=r"style jitter: morph is a probability in \[0, 1\], got 1.5"):
        StyleJitter(morph=1.5)
    with pytest.raises(ConfigError, match="style jitter: gamma must be ≥ 0, got -1"):
        StyleJitter(gamma=-1)
