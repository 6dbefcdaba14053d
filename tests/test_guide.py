"""Guided generation: the combined old/new classifier loss, by hand (the generator with a guide: test_synthesis)."""

from __future__ import annotations

import pytest
import torch

from exmodel.strategies.ed.losses import normalize_logits
from exmodel.synthesis.guide import guided_cross_entropy


def test_the_experts_logits_are_standardized_like_the_targets():
    z = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    out = normalize_logits(z, "standardize")
    assert torch.allclose(out[0], torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert torch.allclose(out[1], torch.zeros(2))  # a constant row stays finite


def test_guided_cross_entropy_by_hand():
    g = torch.tensor([[3.0, 0.0, 1.0, -1.0]])  # the guide's 4 global units; it knows classes 0 and 1
    e = torch.tensor([[2.0, -2.0]])  # the expert's 2 units, for global classes 2 and 3
    old = torch.tensor([True, True, False, False])
    # the guide's raw logits for its classes; the expert's standardized: [1, -1]
    row = torch.tensor([3.0, 0.0, 1.0, -1.0])
    want = -torch.log_softmax(row, 0)[3]
    got = guided_cross_entropy(g, e, torch.tensor([3]), old, [0, 1], [2, 3])
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # the guide's opinion of the expert's own classes is left out; an old class shared with the expert
    # takes the expert's value
    shared = guided_cross_entropy(g, e, torch.tensor([3]), torch.tensor([True, True, True, False]), [0, 1], [2, 3])
    assert shared.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="one expert column per class"):
        guided_cross_entropy(g, e, torch.tensor([3]), old, [0], [2, 3])
