"""SKILL-mini: 13 tasks from 5 offline sources with real class names, drawn from a seed."""

from __future__ import annotations

import pytest
import torch

from exmodel.data.skill_mini import PER_CLASS, SOURCES, build_skill_mini, manifest
from exmodel.errors import DataError

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def tiny():
    return build_skill_mini(None, "tiny", seed=0)


def test_thirteen_tasks_from_five_sources_with_real_names(tiny) -> None:
    assert len(tiny) == 13 and len({t.name for t in tiny}) == 13
    assert {t.source for t in tiny} == set(SOURCES)
    names = {t.name: t.class_names for t in tiny}
    assert names["fashion_a"] == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
    assert names["faces"] == ("face", "not a face")
    assert names["typefaces"][:2] == ("DejaVu Sans", "DejaVu Serif")
    assert names["letters_k_t"] == tuple("KLMNOPQRST")


def test_every_class_has_its_images(tiny) -> None:
    n_train, n_test = PER_CLASS["tiny"]
    for t in tiny:
        for part, n in ((t.splits.train, n_train), (t.splits.test, n_test)):
            counts = torch.bincount(part.labels, minlength=part.num_classes)
            assert (counts == n).all(), (t.name, counts.tolist())
            assert part.images.dtype == torch.uint8 and part.images.shape[1] in (1, 3)
            assert part.images.float().std() > 5  # not blank


def test_same_seed_same_images_other_seed_other_images(tiny) -> None:
    again = build_skill_mini(None, "tiny", seed=0)
    other = build_skill_mini(None, "tiny", seed=1)
    for a, b, c in zip(tiny, again, other):
        assert torch.equal(a.splits.train.images, b.splits.train.images)
    letters = [t for t in other if t.name == "letters_a_j"][0]
    assert not torch.equal(tiny[1].splits.train.images, letters.splits.train.images)


def test_patches_for_testing_come_from_other_rows_than_training_ones(tiny) -> None:
    for name in ("textures", "photos"):
        t = [t for t in tiny if t.name == name][0]
        train = {bytes(x.numpy()) for x in t.splits.train.images}
        assert not any(bytes(x.numpy()) in train for x in t.splits.test.images)


def test_full_needs_the_data_dir_and_sizes_are_checked() -> None:
    with pytest.raises(DataError, match="the full benchmark needs --data-dir with MNIST and Fashion-MNIST"):
        build_skill_mini(None, "full")
    with pytest.raises(DataError, match="size must be one of"):
        build_skill_mini(None, "huge")


def test_manifest_records_sources_licences_and_versions(tiny) -> None:
    m = manifest(tiny, "tiny", 0)
    assert [t["name"] for t in m["tasks"]][:3] == ["mnist_0_4", "letters_a_j", "fashion_a"]
    assert "CC BY-SA 3.0" in m["sources"]["mnist"] and "CC BY 4.0" in m["sources"]["sklearn_digits"]
    assert m["versions"]["scikit-image"] and m["tasks"][3]["shape"] == [3, 48, 48]
