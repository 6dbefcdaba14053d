"""Beneficial biases (SKILL Eq. 1-2): a per-channel bias added to each conv and linear output of a
frozen network, only while applied; trained through the backbone, they raise a head's accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exmodel.agents.features import Backbone
from exmodel.agents.lll import BiasParams, HeadParams, biased_features, fit_linear_head, learn_biases
from exmodel.data.types import ImageDataset
from exmodel.models import build_model
from exmodel.models.biases import BeneficialBiases, bias_sites


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=True)
        self.fc = nn.Linear(2, 3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.fc(self.conv(x).mean((2, 3))))


def test_eq_1_and_2_by_hand() -> None:
    net = Tiny()
    with torch.no_grad():
        net.conv.weight.fill_(2.0)
        net.conv.bias.copy_(torch.tensor([1.0, -1.0]))
        net.fc.weight.copy_(torch.eye(3, 2))
        net.fc.bias.zero_()
    bb = BeneficialBiases(net)
    assert bb.names == ["conv", "fc"] and bb.count == 2 + 3  # the classifier `head` gets none
    bb.load({"conv": torch.tensor([0.5, 0.25]), "fc": torch.tensor([10.0, 20.0, 30.0])})
    x = torch.ones(1, 1, 2, 2)
    with bb.applied(net):
        conv = net.conv(x)
        fc = net.fc(torch.tensor([[1.0, 1.0]]))
    # y = Conv(x) + b + B: 2*1 + 1 + 0.5 and 2*1 - 1 + 0.25 on every pixel
    assert torch.allclose(conv, torch.tensor([3.5, 1.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2))
    assert torch.allclose(fc, torch.tensor([[11.0, 21.0, 30.0]]))  # FC(x) + b + B
    assert torch.allclose(net.conv(x), torch.tensor([3.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2))  # removed after


def test_biases_refuse_other_layers_and_shapes() -> None:
    bb = BeneficialBiases(Tiny())
    with pytest.raises(ValueError, match="1 missing, 0 unexpected"):
        bb.load({"conv": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"beneficial biases of fc: \(2,\), expected \(3,\)"):
        bb.load({"conv": torch.zeros(2), "fc": torch.zeros(2)})
    with pytest.raises(ValueError, match="made for another network"):
        with bb.applied(build_model("lenet")):
            pass


def test_lite0_has_a_bias_per_channel_of_every_conv() -> None:
    net = build_model("efficientnet_lite0", input_size=32)
    sites = bias_sites(net)
    assert len(sites) == 1 + 16 * 3 - 1 + 1  # stem, 3 convs per block (block 0 has no expansion), head conv
    assert sum(c for *_, c in sites) == BeneficialBiases(net).count > 10_000


def test_trained_biases_fit_what_no_head_on_the_frozen_features_can() -> None:
    """Images with a darker square or without: a small frozen random MLP's features leave the best
    head on them at chance; biases trained through the MLP with the head go beyond the best
    head-only fit (lower training loss than L-BFGS's optimum), and the MLP's weights do not move."""
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=3, input_size=8, hidden=[16, 4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bb = Backbone(model, "mlp-test", 8)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(40)
    images = torch.randint(0, 200, (80, 1, 8, 8), generator=g).to(torch.uint8)
    images[labels == 1, :, 2:6, 2:6] //= 2
    data = ImageDataset(images, labels, ("plain", "square"), "squares")
    feats = bb.features(images)
    head = fit_linear_head(feats, labels, 2, HeadParams(weight_decay=0))
    plain_loss = F.cross_entropy(feats @ head[0].T + head[1], labels)
    state, w, b = learn_biases(data, bb, head, BiasParams(epochs=100, lr=5e-2, batch_size=80), seed=0)
    biased = biased_features(images, bb, state)
    biased_loss = F.cross_entropy(biased @ w.T + b, labels)
    plain_acc = float(((feats @ head[0].T + head[1]).argmax(1) == labels).float().mean())
    biased_acc = float(((biased @ w.T + b).argmax(1) == labels).float().mean())
    assert biased_loss < plain_loss - 0.05 and biased_acc > plain_acc + 0.1, (plain_loss, biased_loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_frozen_head_stays_and_a_refit_head_is_the_lbfgs_fit_on_biased_features() -> None:
    torch.manual_seed(0)
    bb = Backbone(build_model("mlp", in_channels=3, input_size=4, hidden=[8]), "mlp-test", 4)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(2).repeat(10)
    images = (torch.randint(0, 100, (20, 1, 4, 4), generator=g) + 100 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    data = ImageDataset(images, labels, ("dark", "light"), "levels")
    head = fit_linear_head(bb.features(images), labels, 2)
    state, w, b = learn_biases(data, bb, head, BiasParams(epochs=3, lr=1e-2, batch_size=8, head_lr=0.0))
    assert torch.equal(w, head[0]) and torch.equal(b, head[1])  # head_lr 0: only the biases learn
    assert any(v.abs().max() > 0 for v in state.values())
    state2, w2, b2 = learn_biases(data, bb, head, BiasParams(epochs=3, lr=1e-2, batch_size=8, head_lr=0.0,
                                                             refit_head=True), head_params=HeadParams(iterations=50))
    assert all(torch.equal(state[k], state2[k]) for k in state)  # same seed, same biases
    refit = fit_linear_head(biased_features(images, bb, state2), labels, 2, HeadParams(iterations=50))
    assert torch.equal(w2, refit[0]) and torch.equal(b2, refit[1])
