"""Bundles replaced while they are read, and run folders damaged between runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NOTES, count
from helpers import TINY_CONFIG, cli, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_writers_and_a_reader_never_see_half_a_bundle(tmp_path):
    out = tmp_path / "swap.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bundle_swap.py"), "--seconds", "3",
                           "--dir", str(tmp_path / "race"), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(out.read_text())
    assert proc.returncode == 0, (report, proc.stderr[-2000:])
    assert report["saves"]["a"] > 5 and report["saves"]["b"] > 5 and report["loads"] > 5, report
    assert report["failures"] == 0, report["first_failures"]
    assert report["saw"]["a"] + report["saw"]["b"] == report["loads"]
    assert report["leftover_entries"] == []  # no temporary or set-aside directory is left behind
    NOTES.append(f"bundle swap, 3 s: {report['saves']['a'] + report['saves']['b']} saves by two writers, "
                 f"{report['loads']} loads, {report['failures']} failed")
    count("concurrent writers", "complete every time")


@pytest.mark.slow
def test_a_damaged_cell_is_computed_again_on_resume(capsys, tmp_path):
    config = write_config(tmp_path / "c.yaml", {**TINY_CONFIG, "strategies": [{"name": "oracle"}]})
    run = tmp_path / "run"
    assert cli(capsys, "-q", "run", config, "--out", run).code == 0
    cell = run / "cells" / "oracle" / "seed-0.json"
    good = json.loads(cell.read_text())
    for damage in (b"{", b"\xff", b"[]", b"{}"):
        cell.write_bytes(damage)
        result = cli(capsys, "run", config, "--out", run)
        assert result.code == 0 and "unreadable; computing the cell again" in result.err, result.err
        assert json.loads(cell.read_text())["stream_accuracy"] == good["stream_accuracy"]
        count("corrupt run folders", "recomputed")
