"""Cards that lie, cards that ask for unbounded resources, and names that attack the terminal."""

from __future__ import annotations

import json

import pytest
from conftest import count, refused, rewrite_card

from exmodel.cli import main
from exmodel.errors import BundleError
from exmodel.experts.card import ExpertCard

LIES = {
    "num_global_classes 1e12": ({"num_global_classes": 10**12}, "more than the 100000 allowed"),
    "num_global_classes 2e6": ({"num_global_classes": 2 * 10**6}, "more than the 100000 allowed"),
    "hidden [400000] on 4-byte weights": ({"arch_kwargs": {"num_classes": 2, "in_channels": 1, "input_size": 8,
                                                           "hidden": [400000]}}, "has shape (4, 64), expected (400000, 64)"),
    "input_shape 4096²": ({"input_shape": [3, 4096, 4096], "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]}},
                          "more than the 3145728 allowed"),
    "input_shape with a zero": ({"input_shape": [1, 0, 8]}, "must be positive"),
    "unknown arch": ({"arch": "vgg99"}, "vgg99"),
    "arch_kwargs of the wrong type": ({"arch_kwargs": {"hidden": "many"}}, "'hidden' must be a non-empty list"),
    "class id out of range": ({"class_ids": [3, 70]}, "out of range"),
    "duplicate class ids": ({"class_ids": [3, 3]}, "duplicate"),
    "more class names than ids": ({"class_names": ["3", "7", "9"]}, "class_names has 3 entries"),
    "negative std": ({"normalization": {"mean": [0.5], "std": [-1]}}, "must be a finite number > 0"),
    "format version 99": ({"format_version": 99}, "format_version=99 is not supported"),
    "hash of other weights": ({"weights_sha256": "0" * 64}, "SHA-256 of weights.safetensors"),
    "hash not hex": ({"weights_sha256": "x" * 64}, "64 lowercase hex digits"),
    "unknown field": ({"payload": "__import__('os')"}, "payload"),
    "name 100k characters": ({"name": "n" * 100_000}, "more than 200"),
    "created not a time": ({"created": "yesterday"}, "is not an ISO 8601 time"),
}


@pytest.mark.parametrize("case", list(LIES))
def test_lying_card_is_refused(capsys, bundle, case):
    fields, fragment = LIES[case]
    rewrite_card(bundle, **fields)
    refused(capsys, "lying cards and weights", ["inspect", bundle], fragment, root=bundle.parent)


@pytest.mark.parametrize("raw,fragment", [
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[]", "expected a JSON object"),
    (b'{"name": ', "not valid JSON"),
])
def test_unreadable_card_is_refused(capsys, bundle, raw, fragment):
    (bundle / "card.json").write_bytes(raw)
    refused(capsys, "lying cards and weights", ["inspect", bundle], fragment)


def test_card_larger_than_the_limit_is_refused_before_reading(capsys, bundle, monkeypatch):
    monkeypatch.setenv("EXMODEL_MAX_TEXT_BYTES", "64")
    refused(capsys, "lying cards and weights", ["inspect", bundle], "more than the 64 bytes allowed")


ATTACKS = {
    "rich markup": "[/bold]x",
    "rich markup link": "[link=http://evil]click[/link]",
    "ANSI clear screen": "a\x1b[2Jb",
    "OSC window title": "\x1b]0;owned\x07",
    "forged error line": "ok\nerror: everything is fine",
    "forged verified line": "x\rverified: True",
    "bidi override": "abc\u202edcba",
    "NUL byte": "a\x00b",
    "C1 CSI": "a\x9b31mb",
}


@pytest.mark.parametrize("field", ["name", "class_names", "scenario", "arch"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_names_that_attack_the_terminal_are_refused(capsys, bundle, field, attack):
    text = ATTACKS[attack]
    if attack.startswith("rich markup"):  # printable text: accepted, and shown literally
        if field == "arch":
            pytest.skip("not an architecture name")
        rewrite_card(bundle, **({field: [text, "7"]} if field == "class_names" else {field: text}))
        capsys.readouterr()
        assert main(["inspect", str(bundle)]) == 0
        out, err = capsys.readouterr()
        assert text in out and err == ""
        count("markup and escape strings", "shown literally")
        return
    rewrite_card(bundle, **({field: [text, "7"]} if field == "class_names" else {field: text}))
    line = refused(capsys, "markup and escape strings", ["inspect", bundle], "must be printable text")
    assert "\\x" in line or "\\u" in line or "\\n" in line or "\\r" in line  # named, escaped


def test_escapes_in_unexpected_messages_are_escaped_too(capsys, tmp_path):
    """Defence in depth: whatever reaches the error line is escaped, not only card fields."""
    weird = tmp_path / "a\x1b[2Jb"
    refused(capsys, "markup and escape strings", ["inspect", weird], "no such bundle")


def test_validation_lists_the_problem_of_a_card_in_python_too():
    with pytest.raises(BundleError, match="name holds control or text-direction characters"):
        ExpertCard.from_json(json.dumps({"format_version": 1, "name": "a\x1bb", "arch": "mlp", "arch_kwargs": {},
                                         "class_ids": [0], "class_names": ["0"], "trained_class_ids": [0],
                                         "num_global_classes": 1, "input_shape": [1, 2, 2],
                                         "normalization": {"mean": [0], "std": [1]}}))
