"""Helpers shared by the CLI end-to-end tests (tests/test_cli_*.py).

The tests drive the real ``exmodel`` command on a tiny but complete run: embedded MNIST subset,
5 experiences of 2 classes, 60 train / 20 test images per class, LeNet experts trained for one
epoch. One such run takes a few seconds on one CPU core.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from exmodel.cli import main

STRATEGIES = ("oracle", "ensemble_avg", "min_entropy", "param_avg", "finetune")

TINY_CONFIG: dict[str, Any] = {
    "scenario": {"dataset": "mnist", "kind": "nc", "n_experiences": 5, "train_per_class": 60, "test_per_class": 20},
    "expert": {"arch": "lenet", "epochs": 1, "batch_size": 64},
    "strategies": [{"name": name} for name in STRATEGIES[:-1]] + [{"name": "finetune", "params": {"epochs": 1}}],
    "seeds": [0],
}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Full datasets beside the repository, when present (as in tests/conftest.py).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_config(path: Path, config: dict[str, Any] | None = None, **top_level: Any) -> Path:
    """Write ``config`` (default: the tiny run) as YAML, with top-level keys replaced by ``top_level``."""
    tree = json.loads(json.dumps(config if config is not None else TINY_CONFIG))  # deep copy
    tree.update(top_level)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike) -> CliResult:
    """Run ``exmodel ARGS`` in-process and return its exit status and captured output."""
    capsys.readouterr()  # drop earlier output
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_one_error_line(result: CliResult, fragment: str) -> str:
    """Exit status 2 and exactly one stderr line, ``error: ...`` containing ``fragment``."""
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of everything under ``root`` (to prove nothing was written)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def read_events(path: Path) -> list[dict[str, Any]]:
    """The run's event log; a line cut by a kill is ignored (it can only be the last one)."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return events


def since_last_start(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of the latest invocation (the log is appended to by every resumed run)."""
    starts = [i for i, e in enumerate(events) if e["event"] == "run_start"]
    return events[starts[-1]:]


def exmodel_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m exmodel.cli``."""
    script = Path(sys.executable).parent / "exmodel"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "exmodel.cli"]


def subprocess_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", EXMODEL_CACHE_DIR=str(cache_dir))
    env.pop("EXMODEL_DATA_DIR", None)
    return env


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc=None) -> None:
    """Poll ``condition`` every 5 ms; fail (after killing ``proc``) if it does not hold in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            if proc is not None:
                proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def deterministic_part(entry: dict[str, Any]) -> dict[str, Any]:
    """The parts of a results.json strategy entry that a rerun must reproduce (not times or memory)."""
    keys = ("stream_accuracy", "task_aware_stream_accuracy", "accuracy_matrix", "task_aware_accuracy_matrix",
            "forgetting", "state_bytes_per_step")
    return {k: entry[k] for k in keys}


def make_bundle(path: Path, arch: str, classes: list[int], *, num_global_classes: int, names: list[str] | None = None,
                shape: tuple[int, int, int] = (1, 8, 8), mean: float = 0.5, std: float = 0.25, seed: int = 0,
                constant: int | None = None, **arch_kwargs: Any) -> Path:
    """Save an untrained ``arch`` expert over ``classes`` (named by their ids unless ``names``) as a bundle.

    ``constant=c`` zeroes every parameter and sets the last bias (the head's) to 1 for class ``c``, so
    an MLP bundle predicts ``c`` for every image.
    """
    import torch

    from exmodel.experts.bundle import save_bundle
    from exmodel.experts.card import ExpertCard
    from exmodel.experts.expert import Expert
    from exmodel.models import build_model

    torch.manual_seed(seed)
    net = build_model(arch, num_classes=len(classes), in_channels=shape[0], input_size=shape[1], **arch_kwargs)
    if constant is not None:
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            head_bias = [p for name, p in net.named_parameters() if name.endswith("bias")][-1]
            head_bias[classes.index(constant)] = 1.0
    card = ExpertCard(name=path.name, arch=arch, arch_kwargs=dict(net.arch_kwargs), class_ids=classes,
                      class_names=names or [str(c) for c in classes], trained_class_ids=classes,
                      num_global_classes=num_global_classes, input_shape=shape,
                      normalization={"mean": [mean] * shape[0], "std": [std] * shape[0]})
    save_bundle(Expert(card, net), path)
    return path
