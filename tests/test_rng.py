"""Global-generator draws with a seed of their own (exmodel.rng)."""

import torch
from torch import nn

from exmodel.rng import PrivateRNG, seeded


def test_seeded_blocks_repeat_and_leave_the_outer_stream_alone():
    torch.manual_seed(5)
    with seeded(0):
        a = nn.Linear(3, 2).weight.detach().clone()
    after_block = torch.rand(3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    assert torch.equal(after_block, expected)  # as if the block had not run
    torch.manual_seed(77)
    with seeded(0):
        b = nn.Linear(3, 2).weight.detach().clone()
    assert torch.equal(a, b)


def test_a_private_stream_continues_across_blocks_whatever_runs_between():
    rng = PrivateRNG(3)
    with rng.scope():
        first = torch.rand(2)
    torch.rand(50)  # someone else's draws
    with rng.scope():
        second = torch.rand(2)
        with rng.scope():  # re-entered: the same stream goes on
            third = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(torch.cat([first, second, third]), torch.rand(6))
