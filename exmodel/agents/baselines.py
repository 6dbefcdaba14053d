"""SKILL Table 1's baselines: EWC, online EWC, SI, MAS, LwF and ER fine-tuning the same pretrained
backbone as the LLL agent, one task after the other, granted a perfect task oracle at test time.

They are exmodel's class-incremental strategies (:mod:`exmodel.strategies.cil`), unchanged, on a
multi-task stream (``kind: mt``: each test image is scored over its own task's classes only). The
learner is the top of EfficientNet-Lite0 — blocks ``first_block`` … 15 and the head conv, with their
ImageNet weights (79 % of the backbone's weights for the default block 11) — plus one new linear
layer over every class of the benchmark. The blocks below stay frozen, so their output maps are
computed once per image and kept in the feature cache like the LLL agent's features.

The maps travel through the strategies as 8-bit images: each channel's values are coded linearly
between that channel's minimum and maximum over the benchmark's training maps, and the learner's
input normalization (``mean = −lo / (hi − lo)``, ``std = 1 / (hi − lo)``) decodes them. The largest
error this costs on the top's features is reported (``quantization_error``). ER keeps its 10
exemplars per class as these maps (what the frozen bottom would recompute from the images).

Training MACs are counted by a forward hook on the learner (every forward of the learner or of a copy
of it, ×3 when gradients flow: forward and backward), times the top's per-image MACs counted once by
PyTorch's FLOP counter; the importance passes of EWC and MAS (one forward and backward per training
image) are added by formula; the frozen bottom's forward over each training image is added once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from exmodel.agents.features import Backbone, FeatureCache
from exmodel.config import _Strict
from exmodel.data.types import ImageDataset
from exmodel.fileio import atomic_write_json
from exmodel.progress import Progress
from exmodel.strategies.base import Step, StreamInfo, build_strategy

GRAD_PASSES = 3  # a forward and a backward pass (two matmuls per layer) per image


class BaselineRun(_Strict):
    strategy: str  # a registered class-incremental strategy: ft, ewc, online_ewc, si, mas, lwf_mc, er, ...
    label: str | None = None  # its name in the tables (default: the strategy's)
    params: dict[str, Any] = Field(default_factory=dict)  # over the shared settings below

    @property
    def name(self) -> str:
        return self.label or self.strategy


class BaselinesConfig(_Strict):
    first_block: int = Field(11, ge=1, le=15)  # blocks from here on are fine-tuned
    epochs: float = Field(5, gt=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0)  # Adam
    runs: list[BaselineRun] = Field(default_factory=list)

    def strategy_params(self, run: BaselineRun) -> dict[str, Any]:
        return {"arch": "efficientnet_lite0_top", "arch_kwargs": {"first_block": self.first_block},
                "epochs": self.epochs, "batch_size": self.batch_size, "optimizer": "adam", "lr": self.lr, **run.params}

    @model_validator(mode="after")
    def _runs_known(self) -> "BaselinesConfig":
        import exmodel.strategies  # noqa: F401  (registration)
        from exmodel.strategies.base import list_strategies, strategy_class

        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"two baselines share a name ({', '.join(names)}): give them labels")
        for run in self.runs:
            if run.strategy not in list_strategies():
                raise ValueError(f"unknown strategy {run.strategy!r}; available: {', '.join(list_strategies())}")
            cls = strategy_class(run.strategy)
            if "data" not in cls.consumes:
                raise ValueError(f"baseline {run.name}: {run.strategy} does not learn from data")
            cls.Params.model_validate(self.strategy_params(run))
        return self


def _bottom(backbone: Backbone, first_block: int) -> Backbone:
    from exmodel.models.efficientnet_lite import EfficientNetLite, EfficientNetLiteBottom

    if not isinstance(backbone.model, EfficientNetLite):
        raise TypeError("the baselines fine-tune EfficientNet-Lite0: backbone.name must be efficientnet_lite0_imagenet")
    bottom = EfficientNetLiteBottom(backbone.model, first_block, backbone.side)
    return Backbone(bottom, f"{backbone.name}-below{first_block}", backbone.side, backbone.normalize)


def _quantize(maps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) -> uint8, each channel coded linearly on [lo, hi]."""
    scale = (hi - lo).clamp_min(1e-8).view(1, -1, 1, 1)
    return ((maps - lo.view(1, -1, 1, 1)) / scale * 255.0).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class MapStream:
    info: StreamInfo
    trains: list[ImageDataset]  # per task, 8-bit maps with global labels
    tests: list[ImageDataset]
    full: torch.nn.Module  # the whole pretrained Lite0 (its top's weights start every baseline)
    bottom_macs_per_image: int
    quantization_error: float  # largest relative error of the top's features from decoded maps


def top_network(stream: MapStream, first_block: int, num_classes: int = 1) -> torch.nn.Module:
    """The top of the pretrained Lite0 from ``first_block`` on, with a new ``num_classes``-way layer."""
    from exmodel.models import build_model

    c, h, _ = stream.info.input_shape
    top = build_model("efficientnet_lite0_top", num_classes=num_classes, in_channels=c, input_size=h,
                      first_block=first_block)
    load_top(top, stream.full, first_block)
    return top


def load_top(top: torch.nn.Module, full: torch.nn.Module, first_block: int) -> None:
    from exmodel.models.pretrained import lite0_top_state

    result = top.load_state_dict(lite0_top_state(full, first_block), strict=False)
    if set(result.missing_keys) != {"head.weight", "head.bias"} or result.unexpected_keys:
        raise RuntimeError(f"the top of Lite0 did not load: {result}")


def map_stream(bench, backbone: Backbone, cfg: BaselinesConfig, cache: FeatureCache,
               progress: Progress | None = None) -> MapStream:
    """The benchmark as a multi-task stream of 8-bit maps, labels global (task t's classes follow task
    t − 1's)."""
    from exmodel.agents.sequential import counted

    bottom = _bottom(backbone, cfg.first_block)
    shape = bottom.model.map_shape
    maps = [(cache.features(bottom, b.splits.train, progress).view(-1, *shape),
             cache.features(bottom, b.splits.test, progress).view(-1, *shape)) for b in bench]
    everything = torch.cat([tr for tr, _ in maps])
    lo, hi = everything.amin(dim=(0, 2, 3)), everything.amax(dim=(0, 2, 3))
    span = (hi - lo).clamp_min(1e-8)
    mean, std = tuple((-lo / span).tolist()), tuple((1.0 / span).tolist())
    names, task_classes, trains, tests, offset = [], [], [], [], 0
    for b in bench:
        names += [f"{b.name}: {c}" for c in b.class_names]
        task_classes.append(tuple(range(offset, offset + len(b.class_names))))
        offset += len(b.class_names)
    for b, (tr, te), classes in zip(bench, maps, task_classes):
        for split, m, out in ((b.splits.train, tr, trains), (b.splits.test, te, tests)):
            out.append(ImageDataset(_quantize(m, lo, hi), split.labels + classes[0], tuple(names), b.name, mean, std))
    info = StreamInfo("mt", len(names), shape, mean, std, tuple(task_classes), len(bench))
    with torch.no_grad():
        _, per_image = counted(bottom.model.forward_features, bottom.prepare(bench[0].splits.train.images[:1]))
    stream = MapStream(info, trains, tests, backbone.model, per_image, 0.0)
    top = top_network(stream, cfg.first_block).eval()
    with torch.no_grad():
        exact = top.forward_features(maps[0][0][:64])
        decoded = trains[0].float_images(slice(0, 64)) * span.view(1, -1, 1, 1) + lo.view(1, -1, 1, 1)
        stream.quantization_error = float((top.forward_features(decoded) - exact).norm() / exact.norm())
    return stream


class _PassCounter:
    """Images through the learner (or a copy of it), with and without gradients."""

    def __init__(self, kind: type) -> None:
        self.kind, self.grad, self.no_grad, self.paused = kind, 0, 0, False
        self.handle = torch.nn.modules.module.register_module_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        if not self.paused and isinstance(module, self.kind) and args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
                self.grad += args[0].shape[0]
            else:
                self.no_grad += args[0].shape[0]

    def close(self) -> None:
        self.handle.remove()


@torch.no_grad()
def task_oracle_accuracy(strategy, test: ImageDataset, task: int, batch: int = 512) -> float:
    right = 0
    for i in range(0, len(test), batch):
        x, y = test.float_images(slice(i, i + batch)), test.labels[i:i + batch]
        scores = strategy.mask_to_tasks(strategy.predict(x, torch.full_like(y, task)), torch.full_like(y, task))
        right += int((scores.argmax(1) == y).sum())
    return right / max(1, len(test))


def run_baseline(run: BaselineRun, cfg: BaselinesConfig, stream: MapStream, seed: int,
                 progress: Progress | None = None) -> dict:
    """One baseline over every task: its accuracy matrix with a task oracle and its training MACs."""
    from exmodel.agents.sequential import counted
    from exmodel.strategies.learner import Learner

    info, trains, tests = stream.info, stream.trains, stream.tests
    params = cfg.strategy_params(run)
    strategy = build_strategy(run.strategy, params, info, seed)
    load_top(strategy.model.net, stream.full, cfg.first_block)
    with torch.no_grad():
        _, per_image = counted(strategy.model.eval(), trains[0].float_images(slice(0, 1)))
    counter = _PassCounter(Learner)
    acc, extra, t0 = [], 0, time.perf_counter()
    bar = progress.add(f"{run.name}: task", len(trains)) if progress else None
    try:
        for i, train in enumerate(trains):
            strategy.observe(Step(i, i, info.task_classes[i]), None, train, progress)
            if run.strategy in ("ewc", "online_ewc", "mas"):
                extra += GRAD_PASSES * per_image * len(train)
            counter.paused = True  # testing is not training
            acc.append([task_oracle_accuracy(strategy, tests[j], j) for j in range(i + 1)])
            counter.paused = False
            if bar is not None:
                progress.advance(bar)
    finally:
        counter.close()
        if bar is not None:
            progress.remove(bar)
    bottom_macs = stream.bottom_macs_per_image * sum(len(t) for t in trains)
    top_macs = per_image * (GRAD_PASSES * counter.grad + counter.no_grad) + extra
    return {"strategy": run.strategy, "params": params, "acc": acc, "average": [sum(r) / len(r) for r in acc],
            "macs": {"bottom": bottom_macs, "top": top_macs, "total": bottom_macs + top_macs, "top_per_image": per_image,
                     "images_with_grad": counter.grad, "images_without_grad": counter.no_grad},
            "seconds": time.perf_counter() - t0}


def run_baselines(cfg: BaselinesConfig, bench, backbone: Backbone, cache: FeatureCache, out: Path, seed: int,
                  progress: Progress | None = None) -> dict:
    """Every configured baseline, each one's result saved to ``out/<name>.json`` as it finishes (a
    rerun loads those and trains only the missing ones)."""
    import json

    if not cfg.runs:
        return {}
    stream = map_stream(bench, backbone, cfg, cache, progress)
    results = {}
    for run in cfg.runs:
        path = out / f"{run.name}.json"
        if path.is_file():
            results[run.name] = json.loads(path.read_text())
            continue
        results[run.name] = run_baseline(run, cfg, stream, seed, progress)
        atomic_write_json(path, results[run.name])
    return {"first_block": cfg.first_block, "quantization_error": stream.quantization_error,
            "bottom_macs_per_image": stream.bottom_macs_per_image, "runs": results}
