"""Ex-Model Distillation on multi-task streams: task masks, the expert's head, and a real MT run."""

import pytest
import torch

from exmodel.config import load_config
from exmodel.data import load_dataset
from exmodel.runner import experts_for, run_cell
from exmodel.strategies.ed.losses import ed_loss, ed_targets, masked_cross_entropy, normalize_logits
from exmodel.strategies.ed.multitask import take_expert_head, task_class_masks

NAN = float("nan")


def test_task_class_masks_by_hand():
    m = task_class_masks(((0, 3), (1, 2)), 5)
    assert m[0].tolist() == [True, False, False, True, False]
    assert m[2].tolist() == [False, True, True, False, False]
    assert not m[4].any()  # a class of no task has no allowed units
    with pytest.raises(ValueError, match="must not share classes"):
        task_class_masks(((0, 1), (1, 2)), 3)


def test_masked_cross_entropy_is_a_softmax_over_the_allowed_classes():
    logits = torch.tensor([[1.0, 5.0, 2.0, -1.0], [0.5, 0.0, 3.0, 1.0]])
    allowed = torch.tensor([[True, False, True, False], [False, True, True, False]])
    y = torch.tensor([2, 1])
    lp0 = torch.log_softmax(torch.tensor([1.0, 2.0]), 0)
    lp1 = torch.log_softmax(torch.tensor([0.0, 3.0]), 0)
    want = -(lp0[1] + lp1[0]) / 2
    assert masked_cross_entropy(logits, y, allowed).item() == pytest.approx(want.item(), rel=1e-6)
    eps = 0.2  # smoothing spreads eps over the 2 allowed classes only
    want_s = ((1 - eps) * -(lp0[1] + lp1[0]) + eps * -(lp0.mean() + lp1.mean())) / 2
    assert masked_cross_entropy(logits, y, allowed, eps).item() == pytest.approx(want_s.item(), rel=1e-6)
    full = torch.ones_like(allowed)
    assert masked_cross_entropy(logits, y, full, eps).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y, label_smoothing=eps).item(), rel=1e-6)
    with pytest.raises(ValueError, match="outside its sample's allowed classes"):
        masked_cross_entropy(logits, torch.tensor([1, 1]), allowed)


def test_mt_targets_and_loss_use_only_the_task_units():
    prev = torch.tensor([[2.0, 0.0, 9.0, -9.0]])  # sample of old task {0, 1}: units 2, 3 must not matter
    exp = torch.tensor([[NAN, NAN, 1.0, 3.0]])  # the expert of task {2, 3}
    allowed = torch.tensor([[True, True, False, False]])
    t = ed_targets(prev, exp, torch.tensor([0]), torch.tensor([True, True, False, False]),
                   torch.tensor([False, False, True, True]), allowed=allowed)
    assert torch.allclose(t[0, :2], normalize_logits(torch.tensor([[2.0, 0.0]]))[0])  # [1, -1]
    assert torch.isnan(t[0, 2:]).all()
    student = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    total, mse, ce = ed_loss(student, t, torch.tensor([0]), lambda_ce=1.0, allowed=allowed)
    assert mse.item() == pytest.approx(2.0, rel=1e-5) and ce.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


class _Expert:
    def __init__(self, net, class_ids, task_id=None):
        from types import SimpleNamespace

        self.net, self.card = net, SimpleNamespace(class_ids=class_ids, task_id=task_id)


def test_take_expert_head_copies_rows_and_first_trunk():
    from exmodel.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet_bn", num_classes=6)
    expert_net = build_model("lenet_bn", num_classes=2)
    assert take_expert_head(model, _Expert(expert_net, [4, 1]), (1, 4), first=True) == 2
    assert torch.equal(model.head.weight[4], expert_net.head.weight[0])
    assert torch.equal(model.head.bias[1], expert_net.head.bias[1])
    x = torch.randn(3, 1, 28, 28)
    model.eval(), expert_net.eval()
    assert torch.allclose(model(x)[:, [4, 1]], expert_net(x), atol=1e-6)  # first step: the ex-model is the expert
    other = build_model("lenet_bn", num_classes=2)
    before = model.conv1.weight.clone() if hasattr(model, "conv1") else next(model.parameters()).clone()
    take_expert_head(model, _Expert(other, [0, 5]), (0, 5), first=False)
    after = model.conv1.weight if hasattr(model, "conv1") else next(model.parameters())
    assert torch.equal(before, after) and torch.equal(model.head.weight[5], other.head.weight[1])
    narrow = build_model("mlp", num_classes=2, hidden=[7])
    assert take_expert_head(model, _Expert(narrow, [2, 3]), (2, 3), first=False) == 0  # other width: kept


def test_replay_ed_on_a_multi_task_stream_keeps_every_task():
    cfg = load_config(None, default={
        "name": "ed_mt_test",
        "scenario": {"dataset": "mnist", "kind": "mt", "n_experiences": 5, "train_per_class": 30,
                     "test_per_class": 20},
        "expert": {"arch": "lenet_bn", "head": "local", "epochs": 2, "batch_size": 32},
        "strategies": [{"name": "replay_ed", "params": {"buffer_size": 300, "iterations": 60, "batch_size": 32}}],
        "seeds": [0]})
    stream, experts, _ = experts_for(cfg, load_dataset("mnist"), "embedded", 0, None)
    rec = run_cell(cfg, "replay_ed", stream, experts, 0)
    R = rec["task_aware_accuracy_matrix"]
    assert rec["accuracy_matrix"] == R  # MT results are scored with the task label
    assert R[0][0] > 0.85  # after step 0 the ex-model is the first expert (2-way task, far above 0.5)
    # every task is still solved after the last step, about as well as its own expert solves it (the
    # experts of this tiny stream are 68-95 %, and the last digits move with the thread count)
    assert all(R[-1][t] > max(0.6, e.card.test_accuracy - 0.1) for t, e in enumerate(experts))
