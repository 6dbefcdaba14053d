"""The class-incremental baselines' losses, importances and exemplar selection, against hand
computations and plain autograd loops."""

import math

import pytest
import torch
from torch import nn

from exmodel.data.types import ImageDataset
from exmodel.strategies.cil.importance import PathIntegral, fisher_diagonal, output_sensitivity
from exmodel.strategies.cil.losses import lwf_mc_loss, quadratic_penalty
from exmodel.strategies.cil.memory import ExemplarMemory, herding_selection


def bce(p, t):
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def sig(z):
    return 1 / (1 + math.exp(-z))


def test_lwf_mc_loss_by_hand():
    # 4 classes, seen {0, 1, 2}: 0 and 1 old, 2 new; unit 3 unseen takes no part
    logits = torch.tensor([[0.5, -1.0, 2.0, 9.0]])
    old = torch.tensor([[1.0, 0.0, 5.0, 5.0]])
    got = lwf_mc_loss(logits, torch.tensor([2]), old, [0, 1], [0, 1, 2])
    want = bce(sig(0.5), sig(1.0)) + bce(sig(-1.0), 0.5) + bce(sig(2.0), 1.0)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # first task: one-hot targets on the seen units only, averaged over the batch
    first = lwf_mc_loss(logits.repeat(2, 1), torch.tensor([2, 2]), None, [], [2])
    assert float(first) == pytest.approx(bce(sig(2.0), 1.0), rel=1e-6)
    # van de Ven et al.'s targets: the old logits divided by the temperature before the sigmoid
    soft = lwf_mc_loss(logits, torch.tensor([2]), old, [0, 1], [0, 1, 2], temperature=2.0)
    want = bce(sig(0.5), sig(0.5)) + bce(sig(-1.0), 0.5) + bce(sig(2.0), 1.0)
    assert float(soft) == pytest.approx(want, rel=1e-6)


def test_quadratic_penalty_by_hand():
    p = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    a = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]
    w = [torch.tensor([2.0, 5.0]), torch.tensor([[0.5]])]
    assert float(quadratic_penalty(p, a, w)) == pytest.approx(2 * 1 + 5 * 0 + 0.5 * 4)
    assert float(quadratic_penalty([], [], [])) == 0.0


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3))
    images = (torch.rand(7, 1, 2, 2, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    return model, ImageDataset(images, torch.zeros(7, dtype=torch.long), ("a", "b", "c"))


def _loop_mean(model, data, f, absolute):
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(data)):
        model.zero_grad()
        f(model(data.float_images(slice(i, i + 1)))[0]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.abs() if absolute else p.grad ** 2
    return {n: v / len(data) for n, v in total.items()}


def test_fisher_diagonal_matches_a_per_sample_autograd_loop():
    model, data = _tiny()
    mask = torch.tensor([True, True, False])
    got = fisher_diagonal(model, data, batch_size=3, generator=torch.Generator(), logit_mask=mask)
    want = _loop_mean(model, data, lambda z: torch.log_softmax(z[:2], 0).max(), absolute=False)
    for n in want:
        torch.testing.assert_close(got[n], want[n])


def test_mas_importance_matches_a_per_sample_autograd_loop():
    model, data = _tiny()
    got = output_sensitivity(model, data, batch_size=4, generator=torch.Generator())
    want = _loop_mean(model, data, lambda z: z.pow(2).sum(), absolute=True)
    for n in want:
        torch.testing.assert_close(got[n], want[n])


def test_path_integral_on_two_hand_made_steps():
    w = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        w.weight.fill_(1.0)
    si = PathIntegral(w, damping=0.5)
    si.start(w)
    for grad, new in ((2.0, 0.8), (1.0, 0.5)):  # gradient g, then the step moves θ to `new`
        w.weight.grad = torch.tensor([[grad]])
        with torch.no_grad():
            w.weight.fill_(new)
        si.step(w)
    si.finish(w)
    path = -(2.0 * (0.8 - 1.0) + 1.0 * (0.5 - 0.8))  # ω = −Σ g·Δθ = 0.7
    assert float(si.omega["weight"]) == pytest.approx(path / ((0.5 - 1.0) ** 2 + 0.5))


def test_herding_follows_the_mean_greedily():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1]])
    order = herding_selection(f, 4).tolist()
    assert sorted(order) == [0, 1, 2, 3]
    n = torch.nn.functional.normalize(f, dim=1)
    mu = n.mean(0)
    first = int(torch.argmin((n - mu).norm(dim=1)))  # k = 1: the sample nearest the mean
    assert order[0] == first == 2
    assert herding_selection(f, 2).tolist() == order[:2]  # a prefix is the selection for a smaller m


def test_memory_budget_shared_or_per_class():
    mem = ExemplarMemory(total=10)
    assert mem.per_class(3) == 3
    mem.add(0, torch.zeros(5, 1, 2, 2, dtype=torch.uint8))
    mem.add(1, torch.ones(5, 1, 2, 2, dtype=torch.uint8))
    mem.shrink(mem.per_class(4))
    assert len(mem) == 4 and mem.images[1].unique().tolist() == [1]
    x, y = mem.sample(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 2, 2) and torch.equal(x[:, 0, 0, 0] * 255, y.float())  # class c kept images of value c
    assert ExemplarMemory(per_class=20).per_class(100) == 20
    with pytest.raises(ValueError, match="exactly one positive budget"):
        ExemplarMemory(total=10, per_class=2)


def test_weight_aligning_scales_the_new_rows_to_the_old_mean_norm():
    from exmodel.strategies.cil.losses import aligned_weights

    w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [1.0, 0.0]])  # norms 5, 1, 10, 1
    out = aligned_weights(w, old=[0, 1], new=[2])
    torch.testing.assert_close(out[2], w[2] * (3.0 / 10.0))  # mean old norm 3, new 10
    torch.testing.assert_close(out[[0, 1, 3]], w[[0, 1, 3]])
    assert torch.equal(aligned_weights(w, old=[], new=[2]), w)


def test_distillation_kl_by_hand():
    from exmodel.strategies.cil.losses import distillation_kl

    z, z_old = torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])
    p = torch.softmax(z / 2, 1)[0]
    q = torch.softmax(z_old / 2, 1)[0]
    want = 4 * float((q * (q.log() - p.log())).sum())
    assert float(distillation_kl(z, z_old, 2.0)) == pytest.approx(want, rel=1e-6)
    assert float(distillation_kl(z_old, z_old, 2.0)) == pytest.approx(0.0, abs=1e-7)
