"""ExpertCard: JSON round trip and one-line errors for every invalid field."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import exmodel
from exmodel.errors import BundleError
from exmodel.experts.card import ExpertCard, Normalization


def card_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "split-mnist-e1",
        "arch": "lenet",
        "arch_kwargs": {"num_classes": 2, "in_channels": 1, "input_size": 28},
        "class_ids": [2, 3],
        "class_names": ["two", "three"],
        "trained_class_ids": [2, 3],
        "num_global_classes": 10,
        "task_id": 1,
        "experience": 1,
        "scenario": "split-mnist",
        "input_shape": [1, 28, 28],
        "normalization": {"mean": [0.1307], "std": [0.3081]},
        "training": {"seed": 0, "epochs": 2, "optimizer": "sgd", "lr": 0.01},
        "test_accuracy": 0.98,
    }
    data.update(overrides)
    return data


def write_card(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    return path


def load_error(tmp_path: Path, data: dict[str, Any]) -> str:
    path = write_card(tmp_path, data)
    with pytest.raises(BundleError) as info:
        ExpertCard.from_json_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_json_round_trip(tmp_path: Path) -> None:
    card = ExpertCard.from_dict(card_dict())
    assert card.input_shape == (1, 28, 28)
    assert card.normalization == Normalization(mean=[0.1307], std=[0.3081])
    path = tmp_path / "card.json"
    path.write_text(card.to_json())
    again = ExpertCard.from_json_file(path)
    assert again == card
    assert json.loads(card.to_json())["class_ids"] == [2, 3]


def test_defaults_are_filled() -> None:
    card = ExpertCard(**card_dict())
    assert card.format_version == 1
    assert card.library_version == exmodel.__version__
    assert card.weights_sha256 == ""
    assert datetime.fromisoformat(card.created).tzinfo is not None


def test_class_id_out_of_range(tmp_path: Path) -> None:
    msg = load_error(tmp_path, card_dict(class_ids=[2, 12]))
    assert msg == "class_ids[1]=12 is out of range [0, 10)"


def test_negative_and_duplicate_class_ids(tmp_path: Path) -> None:
    assert load_error(tmp_path, card_dict(class_ids=[-1, 3])) == "class_ids[0]=-1 is out of range [0, 10)"
    assert load_error(tmp_path, card_dict(class_ids=[3, 3])) == "class_ids[1]=3 is a duplicate"


def test_typo_key_is_named_with_suggestion(tmp_path: Path) -> None:
    data = card_dict()
    data["clas_ids"] = data.pop("class_ids")
    msg = load_error(tmp_path, data)
    # Both the unknown key and the now-missing class_ids are problems; both are reported, the typo first.
    assert msg == "unknown key 'clas_ids' (did you mean 'class_ids'?); missing required key 'class_ids'"


def test_missing_key(tmp_path: Path) -> None:
    data = card_dict()
    del data["arch"]
    assert load_error(tmp_path, data) == "missing required key 'arch'"


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    msg = load_error(tmp_path, card_dict(num_global_classes="ten"))
    assert msg.startswith("num_global_classes: Input should be a valid integer")
    assert msg.endswith("(got 'ten')")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"class_names": ["two"]}, "class_names has 1 entries but class_ids has 2"),
        ({"trained_class_ids": [2, 5]}, "trained_class_ids[1]=5 is not in class_ids"),
        ({"arch_kwargs": {"num_classes": 3}}, "arch_kwargs.num_classes=3 but class_ids lists 2 output units"),
        ({"arch_kwargs": {"in_channels": 3}}, "arch_kwargs.in_channels=3 but input_shape has C=1"),
        ({"arch_kwargs": {"input_size": 32}}, "arch_kwargs.input_size=32 but input_shape has H, W = 28, 28"),
        ({"input_shape": [1, 0, 28]}, "input_shape=[1, 0, 28] must be positive (C, H, W)"),
        ({"input_shape": [1, 28]}, "input_shape: too few items (item 2 is missing)"),
        (
            {"normalization": {"mean": [0.5, 0.5], "std": [0.2, 0.2]}},
            "normalization has 2 channels but input_shape has C=1",
        ),
        ({"normalization": {"mean": [0.5], "std": [0.0]}}, "normalization: std[0]=0.0 must be a finite number > 0"),
        ({"normalization": {"mean": [0.5], "std": [0.2, 0.2]}}, "normalization: mean has 1 values but std has 2"),
        ({"test_accuracy": 1.5}, "test_accuracy=1.5 must be in [0, 1]"),
        ({"format_version": 2}, "format_version=2 is not supported (this exmodel reads 1)"),
        ({"weights_sha256": "abc"}, "weights_sha256 must be 64 lowercase hex digits (or empty before saving)"),
        ({"created": "yesterday"}, "created='yesterday' is not an ISO 8601 time"),
        ({"name": "  "}, "name must not be empty"),
    ],
)
def test_invalid_fields(tmp_path: Path, overrides: dict[str, Any], expected: str) -> None:
    assert load_error(tmp_path, card_dict(**overrides)) == expected


def test_multi_head_card_describes_its_task_head(tmp_path: Path) -> None:
    kwargs = {"num_classes": 10, "heads": [2, 2, 3]}
    ok = ExpertCard.from_dict(card_dict(arch_kwargs=kwargs, task_id=1))
    assert ok.arch_kwargs["heads"] == [2, 2, 3]
    msg = load_error(tmp_path, card_dict(arch_kwargs=kwargs, task_id=2))
    assert msg == "arch_kwargs.heads[2]=3 but class_ids lists 2 output units"
    msg = load_error(tmp_path, card_dict(arch_kwargs=kwargs, task_id=None))
    assert msg == "arch_kwargs.heads lists 3 task heads, so task_id must be in [0, 3), got None"


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text('{"name": "x",\n "arch": }')
    with pytest.raises(BundleError, match=re.escape(f"{path}: not valid JSON (line 2, column 10")):
        ExpertCard.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(BundleError, match=re.escape(f"{path}: expected a JSON object, got list")):
        ExpertCard.from_json_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="card file not found"):
        ExpertCard.from_json_file(tmp_path / "nope.json")


def test_direct_construction_raises_bundle_error() -> None:
    with pytest.raises(BundleError, match=re.escape("card: class_ids[0]=10 is out of range [0, 10)")):
        ExpertCard(**card_dict(class_ids=[10, 3]))
