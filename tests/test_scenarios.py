import pytest
import torch

from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.errors import ConfigError
from exmodel.scenarios import build_stream, subsample_per_class


def toy(n_per_class=6, k=10, test_per_class=4):
    def make(n):
        labels = torch.arange(k).repeat_interleave(n)
        images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
        return ImageDataset(images, labels, tuple(str(i) for i in range(k)), "toy")
    return DatasetSplits(make(n_per_class), make(test_per_class))


def test_nc_disjoint_classes_and_private_splits():
    s = build_stream(toy(), "nc", 5, seed=0)
    assert len(s) == 5 and s.kind == "nc"
    seen = []
    for e in s:
        assert len(e.classes) == 2
        assert set(e.train.labels.tolist()) == set(e.classes) == set(e.test.labels.tolist())
        assert len(e.train) == 12 and len(e.test) == 8
        seen += e.classes
    assert sorted(seen) == list(range(10))
    assert [e.task_id for e in s] == [0, 1, 2, 3, 4]
    assert s.task_classes == [sorted(e.classes) for e in s]


def test_class_order_is_seeded():
    a = [e.classes for e in build_stream(toy(), "nc", 5, seed=1)]
    b = [e.classes for e in build_stream(toy(), "nc", 5, seed=1)]
    c = [e.classes for e in build_stream(toy(), "nc", 5, seed=2)]
    assert a == b and a != c
    fixed = [e.classes for e in build_stream(toy(), "nc", 5, seed=1, shuffle_classes=False)]
    assert fixed == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def test_explicit_order_and_first_experience_size():
    s = build_stream(toy(), "nc", 3, seed=0, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], first_experience_classes=4)
    assert [e.classes for e in s] == [(9, 8, 7, 6), (5, 4, 3), (2, 1, 0)]
    with pytest.raises(ConfigError, match="permutation"):
        build_stream(toy(), "nc", 5, seed=0, class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(ConfigError, match="cannot be split evenly"):
        build_stream(toy(), "nc", 3, seed=0)


def test_ni_stratified_disjoint_shards():
    data = toy(n_per_class=6)
    s = build_stream(data, "ni", 3, seed=0)
    ids = []
    for e in s:
        assert e.classes == tuple(range(10))
        assert torch.bincount(e.train.labels, minlength=10).tolist() == [2] * 10
        ids += e.train.images[:, 0, 0, 0].tolist()
    assert sorted(ids) == sorted(data.train.images[:, 0, 0, 0].tolist())  # a partition of the training set


def test_mt_and_joint():
    mt = build_stream(toy(), "mt", 5, seed=0)
    assert mt.multi_task and [e.task_id for e in mt] == list(range(5))
    joint = build_stream(toy(), "joint", 5, seed=0)
    assert len(joint) == 1 and joint[0].classes == tuple(range(10)) and len(joint[0].train) == 60
    with pytest.raises(ConfigError, match="not one of"):
        build_stream(toy(), "xx", 5, seed=0)


def test_subsample_per_class_is_balanced_and_seeded():
    d = subsample_per_class(toy(), 3, 2, seed=0)
    assert torch.bincount(d.train.labels).tolist() == [3] * 10
    assert torch.bincount(d.test.labels).tolist() == [2] * 10
    again = subsample_per_class(toy(), 3, 2, seed=0)
    assert torch.equal(d.train.images, again.train.images)


def test_validation_split_is_carved_from_train_only():
    from exmodel.scenarios import validation_split

    data = toy(n_per_class=10)
    d = validation_split(data, 0.2, seed=0)
    assert torch.bincount(d.test.labels).tolist() == [2] * 10 and torch.bincount(d.train.labels).tolist() == [8] * 10
    train_ids = set(d.train.images[:, 0, 0, 0].tolist())
    assert train_ids.isdisjoint(d.test.images[:, 0, 0, 0].tolist())
    assert len(d.train) + len(d.test) == len(data.train)
