"""SKD's incremental step: the adaptive weight, the batches of new and delegator images, what is
kept between tasks, and that the delegator keeps old classes that fine-tuning loses (toy quadrants)."""

from __future__ import annotations

import pytest
import torch

from exmodel.evaluation import state_bytes
from exmodel.strategies import Step, StreamInfo, build_strategy
from tests.test_cil_strategies import accuracy, quadrants

INFO = StreamInfo(kind="cil", num_classes=4, input_shape=(1, 4, 4), mean=(0.5,), std=(0.5,),
                  task_classes=((0, 1), (2,), (3,)), n_experiences=3)
TINY = {"arch": "mlp", "arch_kwargs": {"hidden": [16], "batchnorm": True}, "iterations": 150, "batch_size": 16,
        "lr": 0.05, "width": 4, "z_dim": 8, "delegator_epochs": 40, "finetune_epochs": 10, "delegator_batch": 16}


def test_the_adaptive_weight_follows_eq_12():
    s = build_strategy("skd", {**TINY, "iterations": 2, "delegator_epochs": 1, "finetune_epochs": 1}, INFO, seed=0)
    gammas = []
    for i, classes in enumerate(INFO.task_classes):
        s.observe(Step(i, i, classes), None, quadrants(classes, n=8, seed=i))
        gammas.append(s.gamma)
    # β = 5, N = 2 incremental tasks, Σ|C_i| = 1 then 2 (the base task brings none)
    assert gammas[1:] == pytest.approx([5 / (2 * 1), 5 / (2 * 2)])
    assert set(s.delegator_terms[0]) == {"imitate", "explore", "cat", "div", "feature"}  # trained after the base task
    assert 2 not in s.delegator_terms  # nothing follows the last task: no delegator training


def test_batches_hold_as_many_delegator_images_labelled_by_the_old_model():
    s = build_strategy("skd", {**TINY, "iterations": 20, "delegator_epochs": 2}, INFO, seed=0)
    s.observe(Step(0, 0, (0, 1)), None, quadrants((0, 1)))
    s.before_task(Step(1, 1, (2,)), None)
    s.seen.append(2)
    x, y = s.replay(16)
    assert x.shape == (16, 1, 4, 4) and set(y.tolist()) <= {0, 1}
    with torch.no_grad():
        want = torch.tensor([0, 1])[s.old_model(x)[:, [0, 1]].argmax(1)]
    assert torch.equal(y, want)


def test_state_is_model_and_delegator_and_does_not_grow():
    s = build_strategy("skd", {**TINY, "iterations": 5, "delegator_epochs": 2, "finetune_epochs": 2}, INFO, seed=0)
    sizes = []
    for i, classes in enumerate(INFO.task_classes):
        s.observe(Step(i, i, classes), None, quadrants(classes, n=8, seed=i))
        sizes.append(state_bytes(s.state()))
    assert set(s.state()) == {"model", "delegator"} and len(set(sizes)) == 1
    assert s.exemplars() is None and s.exemplar_free


def test_the_delegator_keeps_the_base_classes_that_fine_tuning_forgets():
    two = StreamInfo(kind="cil", num_classes=4, input_shape=(1, 4, 4), mean=(0.5,), std=(0.5,),
                     task_classes=((0, 1), (2, 3)), n_experiences=2)
    scores = {}
    for name, extra in (("skd", {}), ("skd_without", {"use_delegator": False, "w_fc": 0.0, "adaptive_weight": False})):
        s = build_strategy("skd", {**TINY, **extra}, two, seed=0)
        for i, classes in enumerate(two.task_classes):
            s.observe(Step(i, i, classes), None, quadrants(classes, seed=i))
        scores[name] = accuracy(s, (0, 1))
    assert scores["skd"] > scores["skd_without"] + 0.3, scores


def test_explore_against_the_learner_moves_only_the_delegator():
    s = build_strategy("skd", {**TINY, "iterations": 4, "delegator_epochs": 1, "finetune_epochs": 0, "explore_every": 2},
                       INFO, seed=0)
    s.observe(Step(0, 0, (0, 1)), None, quadrants((0, 1), n=8))
    s.before_task(Step(1, 1, (2,)), None)
    s.seen.append(2)
    s.model.train()  # as in the training loop
    for p in s.model.parameters():
        p.grad = torch.ones_like(p)
    learner = {k: v.clone() for k, v in s.model.state_dict().items()}
    delegator = {k: v.clone() for k, v in s.delegator.state_dict().items()}
    s.after_step(s.model)  # step 1 of 2: nothing yet
    assert all(torch.equal(v, s.delegator.state_dict()[k]) for k, v in delegator.items())
    s.after_step(s.model)
    moved = [k for k, v in delegator.items() if not torch.equal(v, s.delegator.state_dict()[k])]
    assert "fc.weight" in moved
    # the learner's weights, BatchNorm statistics and the gradients of its step are left as they were
    assert all(torch.equal(v, s.model.state_dict()[k]) for k, v in learner.items())
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in s.model.parameters())
    assert s.model.training


def test_balanced_cls_weights_each_class_by_its_share_of_the_batch():
    from exmodel.strategies.skd import class_balance_weights

    w = class_balance_weights(torch.tensor([2, 2, 2, 0]), 4)
    assert w.tolist() == pytest.approx([1.0, 0.0, 1 / 3, 0.0])
    logits = torch.randn(4, 4)
    y = torch.tensor([2, 2, 2, 0])
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    want = (per[:3].mean() + per[3]) / 2  # the mean of each class's mean loss
    got = torch.nn.functional.cross_entropy(logits, y, weight=w)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
