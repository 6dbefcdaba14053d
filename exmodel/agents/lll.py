"""The lightweight lifelong learner (LLL, SKILL Sec. 5): a frozen backbone, one head per task, task
anchors that route an image to its head without a task label.

Learning a task (:func:`learn_task`) touches nothing that earlier tasks own: it fits a linear head on
the frozen features (cross-entropy, L2, L-BFGS on standardized features, the standardization folded
back into the head so that the shared head reads raw features) and the task's anchors (GMMC clusters,
MAHA class means and m images per class). The result is a :class:`TaskKnowledge`, the bundle other
agents receive.

An :class:`LLLAgent` keeps a bank of such bundles (its own and received ones) and predicts with a
task mapper, then the chosen task's head. Mappers (see :mod:`exmodel.agents.mappers`):
``gmmc`` and ``maha`` as in the paper, ``ours`` = Ledoit-Wolf MAHA plus the heads' confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from exmodel.agents import mappers as M
from exmodel.agents.features import Backbone
from exmodel.agents.knowledge import TaskBundleError, TaskKnowledge
from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError

MAPPERS = ("gmmc", "maha", "ours")


@dataclass(frozen=True)
class HeadParams:
    weight_decay: float = 1e-3  # on the standardized features' weights
    iterations: int = 200  # L-BFGS
    gmmc_k: int = M.GMMC_K
    maha_m: int = M.MAHA_M


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, n_classes: int,
                    params: HeadParams = HeadParams(), stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear softmax classifier on raw ``features``: ``(weight (C, D), bias (C,))``, deterministic.
    ``stats``, when given, receives ``evaluations`` (loss and gradient evaluations of L-BFGS) and
    ``macs``: 2 N D C per evaluation (the logits, and the weights' gradient)."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=params.iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    evaluations = [0]

    def closure():
        evaluations[0] += 1
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, labels) + params.weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if stats is not None:
        stats.update(evaluations=evaluations[0], macs=2 * evaluations[0] * x.shape[0] * x.shape[1] * n_classes)
    w, b = w.detach(), b.detach()
    return w / std, b - (w * (mean / std)).sum(1)  # the same logits on raw features


def anchors_for(mappers) -> tuple[str, ...]:
    """The anchors a task must carry for these mappers (``ours`` reads MAHA's)."""
    return tuple(a for a in ("gmmc", "maha") if a in mappers or (a == "maha" and "ours" in mappers))


def maha_picks(labels: torch.Tensor, n_classes: int, m: int, seed: int) -> torch.Tensor:
    """Indices of the ``m`` images per class a task shares for MAHA (seeded, in class order)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for k in range(n_classes):
        idx = torch.nonzero(labels == k).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:m]])
    return torch.cat(picks)


def learn_task(name: str, data: ImageDataset, features: torch.Tensor, backbone: Backbone,
               params: HeadParams = HeadParams(), seed: int = 0, anchors: tuple[str, ...] = ("gmmc", "maha"),
               maha_share: str = "images") -> TaskKnowledge:
    """Head and anchors of one task from its training images and their features. MAHA's m images per
    class are kept as images (``maha_share="images"``, the paper's) or as their rows of ``features``
    (``"features"``)."""
    if len(features) != len(data):
        raise ConfigError(f"task {name}: {len(features)} feature rows for {len(data)} images")
    c = data.num_classes
    stats: dict = {}
    w, b = fit_linear_head(features, data.labels, c, params, stats)
    knowledge = TaskKnowledge(name, tuple(data.class_names), backbone.cache_id, w, b,
                              info={"train_images": len(data), "head_evaluations": stats["evaluations"],
                                    "macs": {"head": stats["macs"]}})
    if "gmmc" in anchors:
        knowledge.gmmc = M.fit_gmmc(features, params.gmmc_k, seed)
    if "maha" in anchors:
        pick = maha_picks(data.labels, c, params.maha_m, seed)
        knowledge.maha_means = torch.stack([features[data.labels == k].mean(0) if (data.labels == k).any()
                                            else torch.zeros(features.shape[1]) for k in range(c)])
        if maha_share == "features":
            knowledge.maha_features = features[pick].float().clone()
        else:
            knowledge.maha_images = data.images[pick].clone()
        knowledge.maha_labels = data.labels[pick].clone()
    return knowledge


@torch.no_grad()
def shared_features_of(knowledge: TaskKnowledge, backbone: Backbone) -> torch.Tensor | None:
    """The features of the m images per class a bundle shares for MAHA: as sent (``maha/features``), or
    computed from its images in one pass over them alone — the same way by the agent that learned the
    task and by every receiver, so that all hold equal bits; None without MAHA anchors."""
    if knowledge.maha_features is not None:
        return knowledge.maha_features
    return None if knowledge.maha_images is None else backbone.features(knowledge.maha_images)


@dataclass(frozen=True)
class BiasParams:
    epochs: int = 3
    lr: float = 1e-3  # Adam, the biases (and the head, unless head_lr is set)
    batch_size: int = 64
    head_lr: float | None = None  # the head's own learning rate; None: lr; 0: the head stays as it is
    refit_head: bool = False  # afterwards, fit the head again (L-BFGS, as the plain one) on the biased features


def learn_biases(data: ImageDataset, backbone: Backbone, head: tuple[torch.Tensor, torch.Tensor],
                 params: BiasParams = BiasParams(), seed: int = 0, progress=None,
                 head_params: HeadParams = HeadParams()) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Beneficial biases (Eq. 1-2) and a head trained together through the frozen backbone, the head
    starting from ``head`` (the task's head on plain features): ``(biases, weight, bias)``. With
    ``params.refit_head`` the head is then fitted again, with ``head_params``, on the biased features."""
    from exmodel.models.biases import BeneficialBiases

    g = torch.Generator().manual_seed(seed)
    biases = BeneficialBiases(backbone.model)
    w = torch.nn.Parameter(head[0].clone())
    b = torch.nn.Parameter(head[1].clone())
    head_lr = params.lr if params.head_lr is None else params.head_lr
    groups = [{"params": list(biases.parameters())}] + ([{"params": [w, b], "lr": head_lr}] if head_lr > 0 else [])
    opt = torch.optim.Adam(groups, lr=params.lr)
    steps = params.epochs * -(-len(data) // params.batch_size)
    bar = progress.add(f"{data.name}: beneficial biases", steps) if progress else None
    for _ in range(params.epochs):
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), params.batch_size):
            idx = order[i:i + params.batch_size]
            with biases.applied(backbone.model):
                f = backbone.model.forward_features(backbone.prepare(data.images[idx]))
            loss = F.cross_entropy(f @ w.T + b, data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if bar is not None:
                progress.advance(bar)
    if bar is not None:
        progress.remove(bar)
    if params.refit_head:
        with torch.no_grad(), biases.applied(backbone.model):
            feats = backbone.features(data.images)
        return biases.state(), *fit_linear_head(feats, data.labels, data.num_classes, head_params)
    return biases.state(), w.detach(), b.detach()


@torch.no_grad()
def biased_features(images: torch.Tensor, backbone: Backbone, biases: dict[str, torch.Tensor]) -> torch.Tensor:
    """Features of ``images`` with a task's beneficial biases in the backbone."""
    from exmodel.models.biases import BeneficialBiases

    try:
        bb = BeneficialBiases(backbone.model).load(biases)
    except ValueError as exc:
        raise TaskBundleError(f"{exc} (backbone {backbone.cache_id})") from None
    with bb.applied(backbone.model):
        return backbone.features(images)


class LLLAgent:
    """A bank of task bundles and a task mapper over them."""

    def __init__(self, backbone: Backbone, mapper: str = "maha", confidence: float = 1.0) -> None:
        if mapper not in MAPPERS:
            raise ConfigError(f"mapper must be one of {', '.join(MAPPERS)}, got {mapper!r}")
        self.backbone, self.mapper, self.confidence = backbone, mapper, float(confidence)
        self.bank: list[TaskKnowledge] = []
        self._shared_features: list[torch.Tensor] = []  # features of each task's MAHA images
        self._precision: dict[str, torch.Tensor] = {}

    @property
    def tasks(self) -> list[str]:
        return [k.task for k in self.bank]

    def receive(self, knowledge: TaskKnowledge, shared_features: torch.Tensor | None = None) -> None:
        """Add a task's bundle; ``shared_features`` spares recomputing the features of its MAHA images."""
        if knowledge.backbone != self.backbone.cache_id:
            raise TaskBundleError(f"task {knowledge.task}: learned on backbone {knowledge.backbone}, "
                                  f"this agent's is {self.backbone.cache_id}")
        if knowledge.task in self.tasks:
            raise TaskBundleError(f"task {knowledge.task}: already in this agent's bank")
        if self.mapper != "gmmc" and knowledge.maha_means is None:
            raise TaskBundleError(f"task {knowledge.task}: shares no MAHA anchors, which mapper {self.mapper} needs")
        if self.mapper == "gmmc" and knowledge.gmmc is None:
            raise TaskBundleError(f"task {knowledge.task}: shares no GMMC anchors, which mapper gmmc needs")
        if shared_features is None:
            shared_features = shared_features_of(knowledge, self.backbone)
        self.bank.append(knowledge)
        self._shared_features.append(shared_features if shared_features is not None else torch.zeros(0))
        self._precision.clear()

    def _maha_state(self, shrinkage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        means = torch.cat([k.maha_means for k in self.bank])
        owners = torch.cat([torch.full((len(k.class_names),), t) for t, k in enumerate(self.bank)])
        if shrinkage not in self._precision:
            offsets = torch.tensor([0] + [len(k.class_names) for k in self.bank]).cumsum(0)
            samples = torch.cat(self._shared_features)
            labels = torch.cat([k.maha_labels + offsets[t] for t, k in enumerate(self.bank)])
            self._precision[shrinkage] = M.precision(samples, labels, means, shrinkage)
        return means, owners, self._precision[shrinkage]

    def score_parts(self, features: torch.Tensor, mapper: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(anchor scores (N, T), heads' confidence (N, T) for ``ours``, else None)."""
        if not self.bank:
            raise ConfigError("the agent has learned or received no task yet")
        if mapper == "gmmc":
            return M.gmmc_scores(features, [k.gmmc for k in self.bank]), None
        means, owners, prec = self._maha_state("none" if mapper == "maha" else "ledoit_wolf")
        scores = M.maha_scores(features, means, owners, prec, len(self.bank))
        return scores, M.head_confidence(features, self.heads()) if mapper == "ours" else None

    def task_scores(self, features: torch.Tensor, mapper: str | None = None,
                    confidence: float | None = None) -> torch.Tensor:
        """(N, T) scores of every task in the bank; the mapper's choice is their argmax."""
        anchors, conf = self.score_parts(features, mapper or self.mapper)
        weight = self.confidence if confidence is None else confidence
        return anchors if conf is None or not weight else anchors + weight * conf

    def heads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k.head_weight, k.head_bias) for k in self.bank]

    def predict(self, features: torch.Tensor, mapper: str | None = None,
                confidence: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(task, class within that task) for each feature row."""
        task = self.task_scores(features, mapper, confidence).argmax(1)
        return task, self.classify(features, task)

    def classify(self, features: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """The class each row's head (the head of ``task[i]``) gives it."""
        cls = torch.empty_like(task)
        for t, (w, b) in enumerate(self.heads()):
            rows = task == t
            if rows.any():
                cls[rows] = (features[rows] @ w.T + b).argmax(1)
        return cls

    def predict_images(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        """Task and class names of uint8 images: the backbone, the mapper, then that task's head."""
        task, cls = self.predict(self.backbone.features(images))
        return ([self.bank[t].task for t in task.tolist()],
                [self.bank[t].class_names[c] for t, c in zip(task.tolist(), cls.tolist())])
