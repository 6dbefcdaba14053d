"""Train one expert on one experience.

The expert is what another site would hand us: a model trained on its own private data, with a card
describing it. Its head covers either the whole label space (``head: full``, the paper's setting, so
that parameter averaging is defined) or just its own classes (``head: local``); multi-task experts
always have a local head (their task's classes).
"""

from __future__ import annotations

import datetime as _dt

import torch

from exmodel import __version__
from exmodel.config import ExpertConfig
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.progress import Progress
from exmodel.rng import seeded
from exmodel.scenarios import Experience, Stream
from exmodel.training import FitSettings, fit, predict_logits


def expert_seed(run_seed: int, experience: int) -> int:
    """A distinct, reproducible seed per (run seed, experience)."""
    return 1_000 * run_seed + experience


def expert_output_classes(stream: Stream, experience: Experience, head: str) -> list[int]:
    if head == "full" and stream.kind != "mt":
        return list(range(stream.num_classes))
    return sorted(experience.classes)


def train_expert(stream: Stream, experience: Experience, config: ExpertConfig, seed: int, *,
                 init_seed: int | None = None, device: str = "cpu", progress: Progress | None = None) -> Expert:
    """Train the expert of ``experience``; ``seed`` drives the data order, ``init_seed`` (default
    ``seed``) the initial weights."""
    class_ids = expert_output_classes(stream, experience, config.head)
    c, h, _ = stream.input_shape
    arch_kwargs = {"in_channels": c, "input_size": h, **config.arch_kwargs, "num_classes": len(class_ids)}
    with seeded(seed if init_seed is None else init_seed):
        net = build_model(config.arch, **arch_kwargs)
    settings = FitSettings(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                           optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay)
    card = ExpertCard(
        name=f"{stream.name}-seed{seed}-exp{experience.index}",
        arch=config.arch, arch_kwargs=dict(net.arch_kwargs), class_ids=class_ids,
        class_names=[stream.class_names[i] for i in class_ids], trained_class_ids=sorted(experience.classes),
        num_global_classes=stream.num_classes, task_id=experience.task_id, experience=experience.index,
        scenario=stream.name, input_shape=tuple(stream.input_shape),
        normalization={"mean": list(stream.mean), "std": list(stream.std)},
        training={"seed": seed, "init_seed": seed if init_seed is None else init_seed, **settings.__dict__, "train_samples": len(experience.train)},
        test_accuracy=None, library_version=__version__, weights_sha256="",
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    expert = Expert(card, net)
    gen = torch.Generator().manual_seed(seed)
    fit(expert, experience.train, settings, gen, label_map={g: i for i, g in enumerate(class_ids)},
        device=device, progress=progress, description=f"expert {experience.index} {list(experience.classes)}")
    expert.cpu()
    card.test_accuracy = own_class_accuracy(expert, experience)
    return expert


def own_class_accuracy(expert: Expert, experience: Experience) -> float:
    """Accuracy on the experience's test split, predicting among the expert's trained classes."""
    logits = predict_logits(expert, experience.test)
    cols = expert.units(expert.card.trained_class_ids)
    pred = torch.tensor(expert.card.trained_class_ids)[logits[:, cols].argmax(1)]
    return float((pred == experience.test.labels).float().mean()) if len(pred) else float("nan")
