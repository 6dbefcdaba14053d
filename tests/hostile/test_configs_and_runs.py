"""Configs (YAML bombs, path traversal in names, impossible values) and run folders (corrupt files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import count, refused, snapshot
from helpers import TINY_CONFIG

from exmodel.cli import main

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))

CONFIGS = {
    "billion laughs": (BILLION_LAUGHS, "aliases and anchors are not accepted"),
    "one alias": ("seeds: &s [0]\nx: *s\n", "YAML alias *s (line 2)"),
    "python object tag": ("name: !!python/object/apply:os.system [touch pwned]\n", "not valid YAML"),
    "deep nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping at the top level"),
    "name with ../": ("name: ../../../escaped\n", "config name '../../../escaped' must be"),
    "name with a slash": ("name: a/b\n", "it names folders"),
    "absolute name": ("name: /tmp/x\n", "it names folders"),
    "name with an escape": ("name: \"a\\e[2Jb\"\n", "it names folders"),
    "strategy name ../": ("strategies: [{name: ../../x, type: oracle}]\n", "strategy name '../../x' must be"),
    "no strategies": ("strategies: []\n", "lists no strategies"),
    "unknown strategy": ("strategies: [{name: magic}]\n", "unknown strategy 'magic'"),
    "negative iterations": ("strategies: [{name: mi_ed, params: {iterations: -1}}]\n", "iterations"),
    "buffer of zero": ("strategies: [{name: mi_ed, params: {buffer_size: 0}}]\n", "buffer_size"),
    "seed above int64": ("seeds: [99999999999999999999999]\n", "out of range"),
    "negative seed": ("seeds: [-1]\n", "out of range"),
    "no seeds": ("seeds: []\n", "list at least one seed"),
    "unknown device": ("device: tpu9\n", "is not a device name"),
    "unavailable device": ("device: cuda\n", "CUDA is not available"),
    "unknown key": ("epochs: 3\n", "unknown key 'epochs'"),
}


def _config(tmp_path: Path, text: str) -> Path:
    base = {k: v for k, v in TINY_CONFIG.items() if k != "strategies"}
    path = tmp_path / "c.yaml"
    if text.startswith("- "):  # a list document: nothing to add to it
        path.write_text(text)
        return path
    strategies = "" if "strategies:" in text else "strategies: [{name: oracle}]\n"
    path.write_text(text + strategies + "".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()
                                                if f"{k}:" not in text))
    return path


@pytest.mark.parametrize("case", list(CONFIGS))
def test_hostile_config_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch, case):
    text, fragment = CONFIGS[case]
    config = _config(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    if case == "unavailable device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    refused(capsys, "YAML and configs", ["run", config, "--out", tmp_path / "run"], fragment, root=tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("override,fragment", [
    ("name=!!python/name:os.system", "--set name: not valid YAML"),
    ("name=../../up", "must be 1-100 letters"),
    ("seeds=[1e400]", "seeds"),
    ("scenario.n_experiences.deeper=1", "no such entry"),
    ("noequals", "--set expects key=value"),
])
def test_hostile_override_is_refused(capsys, tmp_path, monkeypatch, override, fragment):
    monkeypatch.chdir(tmp_path)
    refused(capsys, "YAML and configs", ["run", "--set", override, "--out", tmp_path / "run"], fragment, root=tmp_path)


def test_non_utf8_and_oversized_configs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    refused(capsys, "YAML and configs", ["run", tmp_path / "latin1.yaml"], "not UTF-8 text", root=tmp_path)
    monkeypatch.setenv("EXMODEL_MAX_TEXT_BYTES", "32")
    (tmp_path / "big.yaml").write_text("name: x\n" + "# padding\n" * 10)
    refused(capsys, "YAML and configs", ["run", tmp_path / "big.yaml"], "more than the 32 bytes allowed", root=tmp_path)


def test_out_that_is_a_file_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("mine")
    refused(capsys, "path traversal and targets", ["run", "--out", tmp_path / "taken"], "is a file, not a run folder",
            root=tmp_path)
    assert (tmp_path / "taken").read_text() == "mine"


# ------------------------------------------------------------------------------------------ run folders
RESULTS = {
    "not JSON": (b"{", "invalid JSON"),
    "not UTF-8": (b"\xff\xfe", "not UTF-8 text"),
    "nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a list": (b"[]", "expected a JSON object"),
    "no scenario": (b"{}", "key 'scenario' must be a string"),
}


@pytest.mark.parametrize("case", list(RESULTS))
def test_corrupt_results_are_refused_by_report(capsys, tmp_path, case):
    raw, fragment = RESULTS[case]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_bytes(raw)
    refused(capsys, "corrupt run folders", ["report", tmp_path / "run", "--out", tmp_path / "out.md"], fragment,
            root=tmp_path)


def test_oversized_results_are_refused_before_reading(capsys, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "results.json", "wb") as fh:
        fh.truncate(1 << 30)  # sparse
    monkeypatch.setenv("EXMODEL_MAX_TEXT_BYTES", str(1 << 20))
    refused(capsys, "corrupt run folders", ["report", tmp_path / "run"], "more than the 1.0 MiB allowed")


def test_run_folder_of_another_config_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("a: &a [1]\nb: *a\n")  # and hostile: never expanded
    before = snapshot(run)
    refused(capsys, "corrupt run folders", ["run", _config(tmp_path, ""), "--out", run], "holds a run of a different")
    assert snapshot(run) == before


@pytest.mark.parametrize("option", ["--json", "--out"])
def test_output_file_that_is_a_directory_is_refused_first(capsys, tmp_path, bundle, option):
    args = (["evaluate", bundle, "--dataset", "mnist", "--json", tmp_path] if option == "--json"
            else ["report", tmp_path, "--out", tmp_path])
    refused(capsys, "path traversal and targets", args, "is a directory or a dangling link", root=tmp_path)


def test_export_into_a_symlink_is_refused_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    export = tmp_path / "export"
    export.mkdir()
    os.symlink(victim, export / "seed-0")
    refused(capsys, "symlinks", ["train-experts", _config(tmp_path, ""), "--export", export],
            "is not a folder of bundles", root=tmp_path)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_bundle_target_that_is_a_symlink_is_refused(capsys, tmp_path, bundle):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, tmp_path / "link")
    refused(capsys, "symlinks", ["consolidate", bundle, "-o", tmp_path / "link", "--iterations", "1"],
            "is not a bundle directory; refusing to replace it", root=tmp_path)


def test_usage_errors_are_one_line(capsys):
    for args in ([], ["--no-such-option"], ["inspect"], ["frobnicate"]):
        capsys.readouterr()
        code = main(args)
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert code == 2 and lines[-1].startswith("error: ") and len(lines) <= 2 and "Traceback" not in err, err
        count("usage errors")


def test_full_disk_is_one_line_and_leaves_no_partial_file(capsys, tmp_path, bundle, monkeypatch):
    import errno

    import exmodel.fileio as fileio

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    out = tmp_path / "out"
    out.mkdir()
    refused(capsys, "path traversal and targets",
            ["-q", "evaluate", bundle, "--dataset", "mnist", "--json", out / "r.json"],
            f"error: {out / 'r.json'}: No space left on device", root=out)
    assert list(out.iterdir()) == []  # the temporary file was removed, nothing half-written
