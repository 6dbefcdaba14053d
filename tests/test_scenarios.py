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


def grouped_toy():
    """10 training images (value = index) of 2 classes in groups 5, 7, 9, and 7 test images."""
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
    groups = torch.tensor([5, 5, 5, 5, 7, 7, 7, 7, 9, 9])
    images = torch.arange(10, dtype=torch.uint8).view(-1, 1, 1, 1)
    train = ImageDataset(images, labels, ("a", "b"), "toy", groups=groups)
    test_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    test = ImageDataset(torch.arange(100, 107, dtype=torch.uint8).view(-1, 1, 1, 1), test_labels, ("a", "b"), "toy")
    return DatasetSplits(train, test)


def _ids(ds):
    return ds.images[:, 0, 0, 0].tolist()


def test_subset_carries_groups_and_checks_them():
    ds = grouped_toy().train
    assert ds.subset(torch.tensor([9, 0, 4])).groups.tolist() == [9, 5, 7]
    assert toy().train.subset(torch.tensor([0])).groups is None
    with pytest.raises(ValueError, match="groups must be int64 with one entry per image"):
        ImageDataset(ds.images, ds.labels, ds.class_names, groups=torch.zeros(3, dtype=torch.int64))


def test_ni_groups_one_experience_per_group():
    s = build_stream(grouped_toy(), "ni", 3, seed=0, ni_split="groups")
    assert [_ids(e.train) for e in s] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [e.train.groups.unique().tolist() for e in s] == [[5], [7], [9]]
    assert all(e.classes == (0, 1) for e in s)


def test_ni_groups_merge_and_cut_to_reach_n():
    merged = build_stream(grouped_toy(), "ni", 2, seed=0, ni_split="groups")
    assert [_ids(e.train) for e in merged] == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]]  # groups 5+7, then 9
    # Four experiences from three groups: the first group is cut in two, within each class (runs of
    # consecutive samples): class 0 = images 0, 1 and class 1 = images 2, 3 -> pieces {0, 2} and {1, 3}.
    cut = build_stream(grouped_toy(), "ni", 4, seed=0, ni_split="groups")
    assert [_ids(e.train) for e in cut] == [[0, 2], [1, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ConfigError, match="cannot cut group 9 into 2 pieces: class 0 has only 1 sample"):
        build_stream(grouped_toy(), "ni", 6, seed=0, ni_split="groups")


def test_ni_groups_share_the_test_set_once():
    data = grouped_toy()
    s = build_stream(data, "ni", 3, seed=0, ni_split="groups")
    test_ids = [i for e in s for i in _ids(e.test)]
    # A partition of the common test set: pooled over experiences (Eq. 2) every test image counts once.
    assert sorted(test_ids) == list(range(100, 107))
    # Class-stratified shards: class 0's 4 images are dealt 2, 1, 1 (its left-over goes to shard 0) and
    # class 1's 3 images 1, 1, 1.
    assert [torch.bincount(e.test.labels, minlength=2).tolist() for e in s] == [[2, 1], [1, 1], [1, 1]]


def test_stratified_shards_are_never_empty_with_few_samples_per_class():
    # 2 test images per class and 5 experiences: before, the last 3 shards of every class were empty.
    s = build_stream(toy(n_per_class=5, test_per_class=2), "ni", 5, seed=0)
    assert [len(e.test) for e in s] == [4, 4, 4, 4, 4]  # 20 images, 2 per class, rotated over shards
    assert [len(e.train) for e in s] == [10] * 5  # 5 per class divides evenly: one per shard, as before


def test_ni_split_errors():
    with pytest.raises(ConfigError, match="ni_split 'groups' needs a dataset with per-sample groups"):
        build_stream(toy(), "ni", 2, seed=0, ni_split="groups")
    with pytest.raises(ConfigError, match="ni_split 'groups' applies only to kind 'ni', not 'nc'"):
        build_stream(grouped_toy(), "nc", 2, seed=0, ni_split="groups")
    with pytest.raises(ConfigError, match="ni_split 'sessions' is not one of stratified, groups"):
        build_stream(grouped_toy(), "ni", 2, seed=0, ni_split="sessions")
