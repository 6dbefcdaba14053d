"""The paper's CIFAR-10 and CORe50 configs run end to end, on tiny files of the genuine formats.

The test writes a data dir with CIFAR-10 (python batches, 6 training and 2 test images per class),
CIFAR-100 (the auxiliary source of ``aux_ed_paper``; 1 image per class and split) and CORe50 (all 50
objects and 11 sessions at 16x16 px; 2 frames per object in s1 so that CORe50-NI can cut s1 in two
for its 9th experience, 1 frame elsewhere). Each shipped config then runs through the CLI with its
costs overridden (one seed, one epoch, width-4 ResNet-18 / width-0.25 MobileNetV2, a 20-image ED
buffer, 2 distillation iterations and 2 synthesis steps), keeping its scenario and strategies as they are (CORe50-NC: its
distillation strategies only, see ``DISTILLATION_ONLY``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from exmodel.cli import main
from exmodel.config import load_config
from exmodel.data import load_dataset
from exmodel.data.catalog import CATALOG
from exmodel.data.core50 import TEST_SESSIONS, TRAIN_SESSIONS
from exmodel.runner import stream_for

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 6, 2
CORE50_SIDE = 16  # MobileNetV2 keeps a 2x2 map at the end of a 16x16 input (three stride-2 stages)
ED_OVERRIDES = ("buffer_size=20", "iterations=2", "batch_size=16")
SMALL_ARCH = {"resnet18": "{width: 4}", "mobilenetv2": "{width_mult: 0.25}"}
# config -> number of experiences of its stream
# (skd_cifar100_b50_t10 differs from _t5 only in n_tasks, core50_ni from core50_nc only in its stream
# (same files, loader, network and strategies): their streams are checked below, their runs would add
# a minute to the suite for nothing new)
PAPER_CONFIGS = {"split_cifar10": 5, "cifar10_mt": 5, "joint_cifar10": 1, "core50_nc": 9,
                 "skd_cifar100_b50_t5": 6, "m2kd_cifar100_20": 5}
# class-incremental strategies: a few iterations, a width-4 ResNet-32 and a tiny delegator
CIL_OVERRIDES = ("epochs=null", "iterations=2", "batch_size=8", "arch_kwargs={width: 4}")
SKD_OVERRIDES = ("width=4", "z_dim=8", "delegator_batch=8", "delegator_epochs=1", "finetune_epochs=1")
# configs whose evaluation-only baselines (oracle, ensembles, parameter averaging: generic code, run on
# split_cifar10) are left out of their end-to-end run: on CORe50's 9 MobileNetV2 experts they cost 25 s
DISTILLATION_ONLY = {"core50_nc"}


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def _write_cifar10(root: Path, rng: np.random.Generator) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir()
    names = CATALOG["cifar10"].class_names
    train_labels = np.repeat(np.arange(10), CIFAR_TRAIN_PER_CLASS)
    for i, part in enumerate(np.array_split(rng.permutation(train_labels), 5), start=1):  # data_batch_1..5
        batch = {b"data": _images(len(part), rng), b"labels": part.tolist()}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"data": _images(10 * CIFAR_TEST_PER_CLASS, rng),
            b"labels": np.repeat(np.arange(10), CIFAR_TEST_PER_CLASS).tolist()}
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))


def _write_cifar100(root: Path, rng: np.random.Generator) -> None:
    d = root / "cifar-100-python"
    d.mkdir()
    names = CATALOG["cifar100"].class_names
    for split in ("train", "test"):
        batch = {b"data": _images(100, rng), b"fine_labels": list(range(100))}
        (d / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": []}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def _write_core50(root: Path, rng: np.random.Generator) -> None:
    for s in range(1, 12):
        frames = 2 if s == 1 else 1
        for o in range(1, 51):
            d = root / "core50_128x128" / f"s{s}" / f"o{o}"
            d.mkdir(parents=True)
            for f in range(frames):
                pixels = rng.integers(0, 256, size=(CORE50_SIDE, CORE50_SIDE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"C_{s:02d}_{o:02d}_{f:03d}.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paper-data")
    rng = np.random.default_rng(0)
    _write_cifar10(root, rng)
    _write_cifar100(root, rng)
    _write_core50(root, rng)
    return root


def cheap_overrides(config: Path) -> list[str]:
    """``--set`` arguments that make a config's run take seconds, leaving its scenario alone."""
    cfg = load_config(config)
    if cfg.scenario.kind == "cil":  # no experts: only the strategies' budgets shrink
        sets = [f"strategies.{i}.params.{kv}" for i, s in enumerate(cfg.strategies)
                for kv in CIL_OVERRIDES + (SKD_OVERRIDES if s.strategy_type.startswith("skd") else ())]
        return [arg for kv in sets for arg in ("--set", kv)]
    sets = ["expert.epochs=1", "expert.batch_size=32", f"expert.arch_kwargs={SMALL_ARCH[cfg.expert.arch]}"]
    for i, s in enumerate(cfg.strategies):
        if s.strategy_type.endswith("_ed_paper"):
            sets += [f"strategies.{i}.params.{kv}" for kv in ED_OVERRIDES]
            if s.strategy_type in ("mi_ed_paper", "di_ed_paper"):
                sets.append(f"strategies.{i}.params.source_params={{steps: 2}}")
    return [arg for kv in sets for arg in ("--set", kv)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_runs_end_to_end(name: str, data_dir: Path, tmp_path: Path) -> None:
    config = CONFIGS / f"{name}.yaml"
    if name in DISTILLATION_ONLY:
        raw = yaml.safe_load(config.read_text())
        raw["strategies"] = [s for s in raw["strategies"] if s["name"].endswith("_ed_paper")]
        raw["reference"] = {k: v for k, v in raw["reference"].items() if k.endswith("_ed_paper")}
        config = tmp_path / config.name
        config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    code = main(["--quiet", "run", str(config), "--data-dir", str(data_dir), "--out", str(out), "--seeds", "0",
                 *cheap_overrides(config)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    cfg = load_config(config)
    T = PAPER_CONFIGS[name]
    cil_tasks = (cfg.scenario.n_tasks or 0) + (cfg.scenario.protocol == "half_base")  # a base task, then n_tasks
    expected = {"joint": 1, "cil": cil_tasks}.get(cfg.scenario.kind, cfg.scenario.n_experiences)
    assert results["num_experiences"] == T == expected
    assert set(results["strategies"]) == {s.name for s in cfg.strategies}
    for strategy, entry in results["strategies"].items():
        acc = entry["stream_accuracy"]["mean"]
        assert 0.0 <= acc <= 1.0, strategy
        assert np.array(entry["accuracy_matrix"]["mean"]).shape == (T, T), strategy
    assert set(results["reference"]) <= set(results["strategies"])


def test_core50_ni_experiences_are_sessions_with_one_shared_test_set(data_dir: Path) -> None:
    cfg = load_config(CONFIGS / "core50_ni.yaml")
    data = load_dataset("core50", data_dir)
    stream = stream_for(cfg, data, seed=0)
    assert len(stream) == 9 and all(e.classes == tuple(range(50)) for e in stream)
    # s1 (2 frames per object) is cut into its first and its second frame; then one session each.
    sessions = [sorted(set(e.train.groups.tolist())) for e in stream]
    assert sessions == [[1], [1]] + [[s] for s in TRAIN_SESSIONS[1:]]
    assert [len(e.train) for e in stream] == [50] * 9  # every experience holds every object once
    assert all(torch.equal(e.train.labels, torch.arange(50)) for e in stream)
    # The common test set (3 sessions x 50 objects) is dealt over the experiences once: no sample twice.
    test_keys = [(g, y) for e in stream for g, y in zip(e.test.groups.tolist(), e.test.labels.tolist())]
    assert len(test_keys) == len(set(test_keys)) == len(data.test) == 150
    assert {g for g, _ in test_keys} == set(TEST_SESSIONS)
    assert sorted(len(e.test) for e in stream) == [16] * 3 + [17] * 6  # 150 = 6 x 17 + 3 x 16


def test_cifar100_class_incremental_order_is_icarls_seed_1993_permutation(data_dir: Path) -> None:
    cfg = load_config(CONFIGS / "skd_cifar100_b50_t10.yaml")
    stream = stream_for(cfg, load_dataset("cifar100", data_dir), seed=4)
    order = [c for e in stream for c in e.classes]
    assert order == np.random.RandomState(1993).permutation(100).tolist()
    assert [len(e.classes) for e in stream] == [50] + [5] * 10
