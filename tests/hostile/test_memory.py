"""The repros of unbounded memory, run in a fresh process whose peak memory is measured.

One subprocess runs every case through the CLI in turn; its peak resident set size (a high-water
mark over all of them) must stay below 1 GiB, and each case must end in one error line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import NOTES, count, rewrite_card

from exmodel.experts.bundle import save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.models import build_model

LIMIT_KIB = 1 << 20  # 1 GiB

RUNNER = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    from exmodel.cli import main
    out = []
    for args in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
        out.append({"args": args, "code": code, "err": err.getvalue()})
    print(json.dumps({"cases": out, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def _bundle(root: Path, name: str, arch: str = "mlp", **kwargs) -> Path:
    torch.manual_seed(0)
    kw = {"num_classes": 2, "in_channels": 1, "input_size": 8, **kwargs}
    card = ExpertCard(name=name, arch=arch, arch_kwargs=kw, class_ids=[0, 1], class_names=["0", "1"],
                      trained_class_ids=[0, 1], num_global_classes=10, input_shape=(1, 8, 8),
                      normalization={"mean": [0.5], "std": [0.5]})
    return save_bundle((build_model(arch, **kw), card), root / name)


@pytest.mark.slow
def test_hostile_repros_stay_under_one_gib(tmp_path):
    cases: dict[str, list[str]] = {}
    b = _bundle(tmp_path, "classes_1e12", hidden=[4])
    rewrite_card(b, num_global_classes=10**12)
    cases["num_global_classes 1e12 (consolidate)"] = ["consolidate", str(b), "-o", str(tmp_path / "m")]
    b = _bundle(tmp_path, "classes_2e6", hidden=[4])
    rewrite_card(b, num_global_classes=2 * 10**6)
    cases["num_global_classes 2e6 (evaluate)"] = ["evaluate", str(b), "--dataset", "mnist"]
    b = _bundle(tmp_path, "hidden", hidden=[4])
    rewrite_card(b, arch_kwargs={"num_classes": 2, "in_channels": 1, "input_size": 8, "hidden": [400_000]})
    cases["mlp hidden [400000] on tiny weights"] = ["inspect", str(b)]
    b = _bundle(tmp_path, "resnet", arch="resnet20")
    rewrite_card(b, input_shape=[1, 4096, 4096], arch_kwargs={"num_classes": 2, "in_channels": 1, "input_size": 4096})
    cases["resnet20 with input 4096²"] = ["inspect", str(b)]
    b = _bundle(tmp_path, "sparse", hidden=[4])
    with open(b / "weights.safetensors", "wb") as fh:
        fh.truncate(2 << 30)
    cases["2 GiB sparse weights"] = ["inspect", str(b)]
    b = _bundle(tmp_path, "bigcard", hidden=[4])
    with open(b / "card.json", "wb") as fh:
        fh.truncate(2 << 30)
    cases["2 GiB sparse card"] = ["inspect", str(b)]
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)))
    cases["billion laughs config"] = ["run", str(laughs), "--out", str(tmp_path / "run")]
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(2 << 30)
    cases["2 GiB sparse config"] = ["run", str(big), "--out", str(tmp_path / "run")]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(list(cases.values()))], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    for name, case in zip(cases, report["cases"]):
        lines = case["err"].splitlines()
        assert case["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, case)
        count("memory bounds (subprocess)")
    NOTES.append(f"peak memory of {len(cases)} memory repros in one process: {report['peak_kib'] / 1024:.0f} MiB")
    assert report["peak_kib"] < LIMIT_KIB, f"peak {report['peak_kib'] / 1024:.0f} MiB"
    assert not (tmp_path / "run").exists() and not (tmp_path / "m").exists()
