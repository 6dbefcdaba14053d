"""Class-incremental baselines: what each keeps, how it predicts, and that it does what it is for —
on a toy stream small enough to train in a second (4 classes, 2 tasks of 2, 4×4 images whose class
is the bright quadrant)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError
from exmodel.evaluation import state_bytes
from exmodel.strategies import Step, StreamInfo, build_strategy

K = 4
INFO = StreamInfo(kind="cil", num_classes=K, input_shape=(1, 4, 4), mean=(0.5,), std=(0.5,),
                  task_classes=((0, 1), (2, 3)), n_experiences=2)
FAST = {"iterations": 150, "batch_size": 16, "lr": 0.01, "arch": "mlp", "arch_kwargs": {"hidden": [16]}}


def quadrants(classes, n=24, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(n)
    x = torch.rand(len(labels), 1, 4, 4, generator=g) * 0.3
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 2 * r:2 * r + 2, 2 * q:2 * q + 2] += 0.7
    return ImageDataset((x * 255).to(torch.uint8), labels, tuple("abcd"), "quadrants", (0.5,), (0.5,))


def run(name: str, params: dict | None = None):
    s = build_strategy(name, {**FAST, **(params or {})}, INFO, seed=0)
    for i, classes in enumerate(INFO.task_classes):
        s.observe(Step(i, i, classes), None, quadrants(classes, seed=i))
    return s


def accuracy(s, classes) -> float:
    test = quadrants(classes, n=50, seed=9)
    pred = s.predict(test.float_images(), torch.zeros(len(test), dtype=torch.long)).argmax(1)
    return float((pred == test.labels).float().mean())


def test_ft_predicts_over_the_seen_classes_only_and_forgets():
    s = build_strategy("ft", FAST, INFO, seed=0)
    s.observe(Step(0, 0, (0, 1)), None, quadrants((0, 1)))
    scores = s.predict(quadrants((0, 1, 2, 3), n=2).float_images(), torch.zeros(8, dtype=torch.long))
    assert torch.isinf(scores[:, 2:]).all() and torch.isfinite(scores[:, :2]).all()
    assert accuracy(s, (0, 1)) > 0.95
    s.observe(Step(1, 1, (2, 3)), None, quadrants((2, 3), seed=1))
    assert accuracy(s, (2, 3)) > 0.95 and accuracy(s, (0, 1)) < 0.2  # catastrophic forgetting


@pytest.mark.parametrize("name", ["er", "icarl"])
def test_exemplars_keep_the_old_classes(name):
    s = run(name, {"memory_size": 8})
    assert accuracy(s, (0, 1)) > 0.8 and accuracy(s, (2, 3)) > 0.8
    # M = 8 over 4 classes seen: 2 images of 4×4 uint8 each, the old classes cut from 4 to 2
    assert {c: len(x) for c, x in s.memory.images.items()} == {0: 2, 1: 2, 2: 2, 3: 2}
    assert state_bytes(s.exemplars()) == 8 * 16
    assert s.exemplar_free is False


def test_er_memory_per_class_grows_with_the_classes():
    s = run("er", {"memory_per_class": 3})
    assert {c: len(x) for c, x in s.memory.images.items()} == {0: 3, 1: 3, 2: 3, 3: 3}


def test_icarl_classifies_by_the_nearest_mean_of_exemplars():
    s = run("icarl", {"memory_size": 8})
    x = quadrants((0, 1, 2, 3), n=3, seed=5).float_images()
    f = F.normalize(s.model.forward_features(x), dim=1)
    means = torch.stack([F.normalize(F.normalize(s.model.forward_features(s.memory.images[c].float() / 255), dim=1)
                                     .mean(0), dim=0) for c in range(K)])
    want = torch.cdist(f, means).argmin(1)
    assert torch.equal(s.predict(x, torch.zeros(len(x), dtype=torch.long)).argmax(1), want)


def test_lwf_mc_distils_from_the_model_frozen_after_the_last_task():
    s = build_strategy("lwf_mc", FAST, INFO, seed=0)
    s.observe(Step(0, 0, (0, 1)), None, quadrants((0, 1)))
    snapshot = {k: v.clone() for k, v in s.model.state_dict().items()}
    assert all(torch.equal(snapshot[k], v) for k, v in s.old_model.state_dict().items())
    assert not any(p.requires_grad for p in s.old_model.parameters())
    s.observe(Step(1, 1, (2, 3)), None, quadrants((2, 3), seed=1))
    assert s.old_classes == [0, 1] and set(s.loss_log[1]) == {"bce"}


def test_regularisers_add_their_term_from_the_second_task_and_online_ewc_keeps_one_anchor():
    for name, term in (("ewc", "ewc"), ("online_ewc", "ewc"), ("si", "si"), ("mas", "mas")):
        s = run(name, {"iterations": 20})
        assert term not in s.loss_log[0] and s.loss_log[1][term] > 0, name
    ewc, online = run("ewc", {"iterations": 5}), run("online_ewc", {"iterations": 5})
    assert len(ewc.anchors) == 2 and len(online.anchors) == 1  # ewc's state grows with the tasks


def test_an_exemplar_budget_on_an_exemplar_free_strategy_is_one_clear_error():
    with pytest.raises(ConfigError, match="strategy 'lwf_mc' is exemplar-free: it keeps no training images, so "
                                          "'memory_size' does not apply \\(strategies with an exemplar memory: er, icarl"):
        build_strategy("lwf_mc", {"memory_size": 20}, INFO, seed=0)


def test_the_same_seed_gives_the_same_model():
    a, b = run("si", {"iterations": 10}), run("si", {"iterations": 10})
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
