"""The hostile-input suite: crafted files and arguments against the real CLI.

Every case asserts the same contract (:func:`refused`): exit status 2, exactly one line on stderr
that starts with ``error:``, no traceback, no terminal control character anywhere in the output, and
nothing written or changed outside what the command may write. Each case is counted under its
category; the counts and outcomes are printed at the end of the run (``hostile inputs: ...``) and
written to ``$EXMODEL_HOSTILE_REPORT`` when that is set (``benchmarks/fuzz_report.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from exmodel.cli import main
from exmodel.experts.bundle import save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.models import build_model

CASES: Counter[tuple[str, str]] = Counter()  # (category, outcome) -> count
NOTES: list[str] = []  # measured figures shown in the summary (e.g. the memory peak)
_CONTROL = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f", "\x9b", "\u202e"}


def snapshot(root: Path) -> dict[str, tuple[int, int, bool]]:
    """Every path under ``root``: size, mtime, whether it is a link; to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.is_symlink())
    return out


def refused(capsys: pytest.CaptureFixture[str], category: str, args: list, fragment: str = "",
            root: Path | None = None, may_create: tuple[str, ...] = ()) -> str:
    """Run ``exmodel ARGS`` in-process and assert the hostile-input contract; returns the error line.
    ``root`` (default: none checked) must be unchanged afterwards, but for the ``may_create`` names."""
    before = snapshot(root) if root is not None else None
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except BaseException as exc:  # noqa: BLE001  an escape is a failed case, counted as such
        CASES[(category, "escaped")] += 1
        raise AssertionError(f"{type(exc).__name__} escaped the CLI: {exc}") from exc
    out, err = capsys.readouterr()
    lines = err.splitlines()
    ok = (code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
          and not (_CONTROL & set(out + err)) and fragment in err)
    if ok and before is not None:
        after = {k: v for k, v in snapshot(root).items() if not k.split(os.sep)[0] in may_create}
        ok = after == {k: v for k, v in before.items() if not k.split(os.sep)[0] in may_create}
    CASES[(category, "refused" if ok else "FAILED")] += 1
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not (_CONTROL & set(out + err)), repr(out + err)
    assert fragment in err, err
    if before is not None:
        assert ok, "files changed under the folder"
    return lines[0]


def count(category: str, outcome: str = "refused") -> None:
    """Count a case checked without the CLI (e.g. through load_bundle in a property-based test)."""
    CASES[(category, outcome)] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not CASES:
        return
    categories = sorted({c for c, _ in CASES})
    rows = {c: {o: n for (cc, o), n in CASES.items() if cc == c} for c in categories}
    terminalreporter.write_line("hostile inputs: " + "; ".join(
        f"{c}: {sum(r.values())} cases, " + ", ".join(f"{n} {o}" for o, n in sorted(r.items()))
        for c, r in rows.items()))
    for note in NOTES:
        terminalreporter.write_line(f"hostile inputs: {note}")
    if path := os.environ.get("EXMODEL_HOSTILE_REPORT"):
        Path(path).write_text(json.dumps({"cases": rows, "notes": NOTES}, indent=2) + "\n")


# ----------------------------------------------------------------------------------------- bundles
def small_card(**fields) -> dict:
    card = dict(name="mlp-2", arch="mlp", arch_kwargs={"num_classes": 2, "in_channels": 1, "input_size": 8,
                                                        "hidden": [4]},
                class_ids=[3, 7], class_names=["3", "7"], trained_class_ids=[3, 7], num_global_classes=10,
                input_shape=[1, 8, 8], normalization={"mean": [0.5], "std": [0.5]})
    card.update(fields)
    return card


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A valid, tiny bundle (an 8×8 MLP for classes 3 and 7 of 10) under ``tmp_path/b``."""
    torch.manual_seed(0)
    card = ExpertCard.from_dict(small_card())
    net = build_model("mlp", **card.arch_kwargs)
    return save_bundle((net, card), tmp_path / "b")


def rewrite_card(bundle: Path, **fields) -> None:
    """Change card fields on disk (no validation: the point is to lie)."""
    card = json.loads((bundle / "card.json").read_text())
    card.update(fields)
    (bundle / "card.json").write_text(json.dumps(card))


def write_weights(bundle: Path, raw: bytes, rehash: bool = True) -> None:
    """Replace the weights file; with ``rehash`` the card records the new file's hash, so that the
    reader's other checks, not the hash, must catch the problem."""
    (bundle / "weights.safetensors").write_bytes(raw)
    if rehash:
        rewrite_card(bundle, weights_sha256=hashlib.sha256(raw).hexdigest())
