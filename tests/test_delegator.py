"""The knowledge delegator of SKD: its losses by hand, its generator's output, and imitate & explore
doing what it is for on a tiny teacher."""

import math

import pytest
import torch

from exmodel.strategies import StreamInfo
from exmodel.strategies.learner import Learner
from exmodel.synthesis.delegator import DelegatorGenerator, DelegatorSettings, train_delegator
from exmodel.synthesis.delegator_losses import (bn_norm_loss, class_balance_loss, feature_cosine_discrepancy,
                                                pseudo_label_cross_entropy)
from exmodel.models import build_model


def test_feature_cosine_discrepancy_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    s = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # cos 1 and cos 45° = 1/√2
    assert float(feature_cosine_discrepancy(t, s)) == pytest.approx((0 + (1 - 1 / math.sqrt(2))) / 2)
    with pytest.raises(ValueError, match="feature shapes differ"):
        feature_cosine_discrepancy(t, s[:, :1])


def test_pseudo_labels_and_class_balance_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    p0, p1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    assert float(pseudo_label_cross_entropy(logits)) == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, rel=1e-6)
    w = torch.tensor([(p0 + 1 - p1) / 2, (1 - p0 + p1) / 2])
    assert float(class_balance_loss(logits)) == pytest.approx(float((w * w.log()).sum()), rel=1e-6)
    even = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert float(class_balance_loss(even)) == pytest.approx(-math.log(2), rel=1e-6)


def test_bn_norm_loss_uses_plain_norms_of_mean_and_variance():
    stats = [(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0]), torch.tensor([4.0, 1.0]))]
    assert float(bn_norm_loss(stats)) == pytest.approx(3.0 + 3.0)  # ‖(0, 3)‖ + ‖(−3, 0)‖
    assert float(bn_norm_loss([])) == 0.0


def test_the_helper_bn_normalises_every_channel_of_a_batch():
    g = DelegatorGenerator((3, 10, 10), z_dim=8, width=4)
    x = g.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 10, 10)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    before = g.helper_bn.running_mean.clone()
    g.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(g.helper_bn.running_mean, before)  # sampling leaves the running statistics alone


def test_imitate_and_explore_teach_the_clone_to_see_as_the_teacher():
    info = StreamInfo("cil", 3, (1, 12, 12), (0.5,), (0.5,), ((0, 1, 2),), 1)
    torch.manual_seed(0)
    teacher = Learner(info, "lenet_bn").eval()
    expert = teacher.as_expert([0, 1, 2])
    student = build_model("lenet_bn", **teacher.net.arch_kwargs)
    g = DelegatorGenerator((1, 12, 12), z_dim=16, width=8)
    probe = g.sample(64, torch.Generator().manual_seed(5))

    def gap():
        with torch.no_grad():
            return float(feature_cosine_discrepancy(teacher.net.forward_features(probe),
                                                    student.eval().forward_features(probe)))
    before = gap()
    terms = train_delegator(g, expert, student, DelegatorSettings(epochs=30, batch_size=32), torch.Generator().manual_seed(0))
    assert set(terms) == {"imitate", "explore", "cat", "div", "feature"}
    assert gap() < 0.5 * before  # the clone's features now point where the teacher's do
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is given back trainable
