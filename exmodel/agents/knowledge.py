"""What an LLL agent shares about one task, and its file: one safetensors bundle, validated on load.

A :class:`TaskKnowledge` holds the task's head (a linear layer on the backbone's features), its
beneficial biases when it has any, and its task anchors: GMMC clusters and/or MAHA class means with
m images per class (the paper's) or those images' features (exmodel's default for SKILL: every agent
holds the same backbone, so the features are what a receiver would compute, in fewer bytes). The file holds tensors only, plus a JSON card in the safetensors metadata (format,
task name, class names, the backbone it was learned on and its feature width). Nothing is unpickled.

Loading checks everything a receiver relies on before anything is used: the head's width equals the
number of class names and its input the backbone's feature width; anchors have that width too; the
GMMC weights are positive and sum to 1 and its variances are positive; MAHA's images are uint8 with
one label per image, each a class of the task; every value is finite. A problem is one
:class:`TaskBundleError` line naming the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save

from exmodel import limits
from exmodel.agents.mappers import GMMCAnchor
from exmodel.errors import ExmodelError
from exmodel.experts.weights_file import read_described
from exmodel.fileio import atomic_write_bytes

FORMAT, VERSION = "exmodel-lll-task", 1
MAX_SIDE, MAX_CLUSTERS = 1024, 10_000


class TaskBundleError(ExmodelError):
    pass


@dataclass
class TaskKnowledge:
    task: str
    class_names: tuple[str, ...]
    backbone: str  # Backbone.cache_id: weights and resolution
    head_weight: torch.Tensor  # (C, D)
    head_bias: torch.Tensor  # (C,)
    gmmc: GMMCAnchor | None = None
    maha_means: torch.Tensor | None = None  # (C, D)
    maha_images: torch.Tensor | None = None  # uint8 (m C, ch, h, w)
    maha_labels: torch.Tensor | None = None  # int64 (m C,)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)  # beneficial biases, by layer
    info: dict = field(default_factory=dict)  # training time, sample counts, ...
    maha_features: torch.Tensor | None = None  # float32 (m C, D): the MAHA images' features, sent instead of them

    @property
    def num_features(self) -> int:
        return int(self.head_weight.shape[1])

    def tensors(self, share: tuple[str, ...] = ("head", "biases", "gmmc", "maha")) -> dict[str, torch.Tensor]:
        out = {}
        if "head" in share:
            out.update({"head/weight": self.head_weight, "head/bias": self.head_bias})
        if "biases" in share:
            out.update({f"bb/{k}": v for k, v in self.biases.items()})
        if "gmmc" in share and self.gmmc is not None:
            out.update({"gmmc/weights": self.gmmc.weights, "gmmc/means": self.gmmc.means,
                        "gmmc/variances": self.gmmc.variances})
        if "maha" in share and self.maha_means is not None:
            out.update({"maha/means": self.maha_means, "maha/labels": self.maha_labels})
            if self.maha_images is not None:
                out["maha/images"] = self.maha_images
            if self.maha_features is not None:
                out["maha/features"] = self.maha_features
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def card(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "task": self.task, "class_names": list(self.class_names),
                "backbone": self.backbone, "num_features": self.num_features, "info": self.info}

    def to_bytes(self, share: tuple[str, ...] = ("head", "biases", "gmmc", "maha")) -> bytes:
        return save(self.tensors(share), metadata={"exmodel": json.dumps(self.card())})

    def nbytes(self, share: tuple[str, ...] = ("head", "biases", "gmmc", "maha")) -> int:
        """Bytes of the bundle that shares ``share`` (what goes over the network for this task)."""
        return len(self.to_bytes(share))


def save_task(knowledge: TaskKnowledge, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(path, knowledge.to_bytes())


def _check(cond: bool, source: str, message: str) -> None:
    if not cond:
        raise TaskBundleError(f"{source}: {message}")


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all()) if t.is_floating_point() else True


def load_task(path: str | os.PathLike, backbone: str | None = None) -> TaskKnowledge:
    """The task bundle at ``path``, checked; ``backbone`` (a cache id), when given, must be the bundle's."""
    source = str(path)
    card, t = read_described(path, FORMAT, VERSION, "an exmodel LLL task bundle", TaskBundleError)
    names = card.get("class_names")
    _check(isinstance(names, list) and 1 <= len(names) <= limits.max_classes()
           and all(isinstance(n, str) and n for n in names), source, "class_names must be a non-empty list of names")
    d = card.get("num_features")
    _check(isinstance(d, int) and 1 <= d <= 1 << 20, source, f"num_features {d!r} is not a feature width")
    task, bb = card.get("task"), card.get("backbone")
    _check(isinstance(task, str) and task and isinstance(bb, str) and bb, source, "the card names no task or backbone")
    if backbone is not None:
        _check(bb == backbone, source, f"learned on backbone {bb}, this agent's is {backbone}")
    bad = sorted(k for k, v in t.items() if not _finite(v))
    _check(not bad, source, f"{len(bad)} tensors hold NaN or infinity (e.g. {bad[0] if bad else ''})")
    c = len(names)
    for key in ("head/weight", "head/bias"):
        _check(key in t, source, f"no {key} tensor")
    _check(tuple(t["head/weight"].shape) == (c, d), source,
           f"the head is {tuple(t['head/weight'].shape)} but the task has {c} class names on {d} features")
    _check(tuple(t["head/bias"].shape) == (c,), source, f"head/bias is {tuple(t['head/bias'].shape)}, expected ({c},)")
    gmmc = None
    if any(k.startswith("gmmc/") for k in t):
        w, mu, var = (t.get(f"gmmc/{k}") for k in ("weights", "means", "variances"))
        _check(w is not None and mu is not None and var is not None, source, "gmmc needs weights, means and variances")
        k = len(w)
        _check(w.ndim == 1 and 1 <= k <= MAX_CLUSTERS, source, f"gmmc/weights has shape {tuple(w.shape)}")
        _check(tuple(mu.shape) == (k, d) and tuple(var.shape) == (k, d), source,
               f"gmmc anchors of the wrong dimension: means {tuple(mu.shape)}, variances {tuple(var.shape)}, "
               f"expected ({k}, {d})")
        _check(bool((w > 0).all()) and math.isclose(float(w.sum()), 1.0, abs_tol=1e-3), source,
               "gmmc/weights must be positive and sum to 1")
        _check(bool((var > 0).all()), source, "gmmc/variances must be positive")
        gmmc = GMMCAnchor(w.float(), mu.float(), var.float())
    means = images = labels = features = None
    if any(k.startswith("maha/") for k in t):
        means, images, labels, features = (t.get(f"maha/{k}") for k in ("means", "images", "labels", "features"))
        _check(means is not None and labels is not None and (images is None) != (features is None), source,
               "maha needs means, labels and either images or features")
        _check(tuple(means.shape) == (c, d), source,
               f"maha anchors of the wrong dimension: means {tuple(means.shape)}, expected ({c}, {d})")
        if images is not None:
            _check(images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] in (1, 3)
                   and 1 <= min(images.shape[2:]) and max(images.shape[2:]) <= MAX_SIDE, source,
                   f"maha/images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        else:
            _check(features.is_floating_point() and features.ndim == 2 and features.shape[1] == d, source,
                   f"maha/features must be floats (N, {d}), got {features.dtype} {tuple(features.shape)}")
        shared = images if images is not None else features
        _check(labels.dtype == torch.int64 and tuple(labels.shape) == (len(shared),), source,
               "maha/labels must be int64, one per image")
        _check(len(labels) == 0 or (int(labels.min()) >= 0 and int(labels.max()) < c), source,
               f"maha/labels must be classes of the task (0..{c - 1})")
    biases = {k[len("bb/"):]: v.float() for k, v in t.items() if k.startswith("bb/")}
    _check(all(v.ndim == 1 for v in biases.values()), source, "beneficial biases must be one value per channel")
    info = card.get("info") if isinstance(card.get("info"), dict) else {}
    return TaskKnowledge(task, tuple(names), bb, t["head/weight"].float(), t["head/bias"].float(), gmmc,
                         None if means is None else means.float(), images, labels, biases, info,
                         None if features is None else features.float())
