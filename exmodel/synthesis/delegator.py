"""The self-distilled knowledge delegator of SKD (Sec. III-B, Algorithm 1 lines 1-16).

A delegator is a small generator followed by a **helper BN layer**: codes ``z ~ N(0, I)`` become
images in the teacher's *normalized* input space (the helper BN, without affine parameters, keeps
every channel of a batch at zero mean and unit variance, as preprocessed real data are). It learns,
without any data, to draw the images on which a freshly initialised clone ``S`` of the teacher ``T``
must learn to see as ``T`` sees:

* **imitate** (``imitate_steps`` per epoch, SGD): ``S`` minimises ``ψ(x', T, S)`` (Eq. 1-2) on the
  delegator's images;
* **explore** (``explore_steps`` per epoch, Adam): the delegator minimises
  ``λ·(−ψ) + L_cat + L_div + R_feature`` (Eq. 3-8): it looks for images on which ``S`` still
  disagrees with ``T`` (``−ψ``), that ``T`` puts in one class (``L_cat``), spread over all classes
  (``L_div``), and that give ``T``'s BatchNorm layers the statistics of its training data
  (``R_feature``).

The paper's text says ``S`` "is kept updated throughout" both phases; updating ``S`` with the explore
loss would have it *increase* ψ and undo the imitation, so here ``S`` takes its optimiser steps in
the imitate phase only (as the student of DFAD, the delegator's ref. [15], does) and sees the explore
batches only through its BatchNorm statistics. The generator is DFAD's ``GeneratorA`` (Fang et al.
2019): linear → BN → ×2 → conv-BN-LeakyReLU → ×2 → conv-BN-LeakyReLU → conv → tanh → helper BN.

The teacher is any :class:`~exmodel.experts.expert.Expert` (SKD's old model is the learner's
:meth:`~exmodel.strategies.learner.Learner.as_expert`); features are its penultimate layer, or its
logits for networks without ``forward_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.delegator_losses import (bn_norm_loss, class_balance_loss, feature_cosine_discrepancy,
                                                pseudo_label_cross_entropy)
from exmodel.synthesis.inversion import features_and_logits
from exmodel.synthesis.priors import BNStatsRecorder
from exmodel.synthesis.upsample import upsample2


class DelegatorGenerator(nn.Module):
    """``z (B, z_dim) -> images (B, C, H, W)`` in normalized input space; see the module docstring."""

    def __init__(self, shape: Sequence[int], z_dim: int = 100, width: int = 32, helper_bn: bool = True) -> None:
        super().__init__()
        c, h, w = (int(v) for v in shape)
        self.shape, self.z_dim, self.width = (c, h, w), z_dim, width
        self.h0, self.w0 = max(1, -(-h // 4)), max(1, -(-w // 4))
        self.fc = nn.Linear(z_dim, 2 * width * self.h0 * self.w0)
        self.bn0 = nn.BatchNorm2d(2 * width)
        self.block1 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
                                    nn.Conv2d(width, c, 3, padding=1), nn.Tanh())
        self.helper_bn = nn.BatchNorm2d(c, affine=False) if helper_bn else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.fc(z).view(len(z), 2 * self.width, self.h0, self.w0))
        x = self.block1(upsample2(x))
        x = self.block2(upsample2(x))
        if x.shape[-2:] != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return self.helper_bn(x)

    def codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.z_dim, generator=generator).to(device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` normalized images, drawn with the helper BN on the batch's own statistics (train mode,
        as during training); the running statistics are left as they were."""
        saved = {k: v.clone() for k, v in self.state_dict().items() if "running" in k or "num_batches" in k}
        was_training = self.training
        self.train()
        x = self(self.codes(n, generator))
        self.load_state_dict({**self.state_dict(), **saved})
        self.train(was_training)
        return x


@dataclass(frozen=True)
class DelegatorSettings:
    epochs: int = 200
    imitate_steps: int = 5  # Algorithm 1: per epoch
    explore_steps: int = 1
    batch_size: int = 128
    imitate_lr: float = 0.1  # SGD (Sec. IV-A)
    explore_lr: float = 1e-3  # Adam
    lr_drop_every: int | None = None  # ×0.1 every this many epochs (the paper: 100)
    lam: float = 1.0  # λ of Eq. 8
    w_cat: float = 1.0  # 0 switches a term off (the Table II ablation)
    w_div: float = 1.0
    w_feature: float = 1.0


def features_of(net: nn.Module, xn: torch.Tensor, compare: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(what ψ compares, logits) of ``net`` on normalized images: its penultimate features, or its
    logits for ``compare == "logits"`` (a teacher without ``forward_features``)."""
    if compare == "logits":
        logits = net(xn)
        return logits, logits
    return features_and_logits(net, xn, None)


def clone_of(teacher: Expert, fallback_arch: str = "lenet_bn") -> tuple[nn.Module, str]:
    """A freshly initialised network to imitate ``teacher`` and what ψ compares: the teacher's own
    registered architecture and its features when it has them; otherwise ``fallback_arch`` with one
    output per teacher output, compared on logits (an imported program has no feature layer)."""
    from exmodel.models import build_model, list_models

    net = teacher.net
    if teacher.card.arch in list_models() and hasattr(net, "forward_features") and hasattr(net, "arch_kwargs"):
        return build_model(teacher.card.arch, **net.arch_kwargs), "features"
    c, h, _ = teacher.card.input_shape
    return build_model(fallback_arch, num_classes=len(teacher.card.class_ids), in_channels=c, input_size=h), "logits"


def train_delegator(delegator: DelegatorGenerator, teacher: Expert, student: nn.Module, settings: DelegatorSettings,
                    generator: torch.Generator, *, classes: Sequence[int] | None = None, compare: str = "features",
                    progress: Progress | None = None, description: str = "delegator") -> dict[str, float]:
    """Imitate & explore for ``settings.epochs``; trains ``delegator`` and ``student`` in place and
    returns each loss term's mean over the last tenth of the epochs. ``classes`` (default: the
    teacher's trained classes) are the classes ``L_cat`` and ``L_div`` spread the images over."""
    s = settings
    units = teacher.units(teacher.card.trained_class_ids if classes is None else classes)

    def teacher_view(xn):
        feats, logits = features_of(teacher.net, xn, compare)
        return feats, logits[:, units]

    teacher.eval()
    trainable = [p for p in teacher.parameters() if p.requires_grad]
    for p in trainable:  # frozen while the delegator learns from it, given back as it was afterwards
        p.requires_grad_(False)
    opt_s = torch.optim.SGD(student.parameters(), lr=s.imitate_lr, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(delegator.parameters(), lr=s.explore_lr)
    scheds = [torch.optim.lr_scheduler.StepLR(o, s.lr_drop_every, 0.1) for o in (opt_s, opt_g)] if s.lr_drop_every else []
    history: dict[str, list[float]] = {}
    task = progress.add(description, total=s.epochs) if progress is not None else None
    student.train()
    delegator.train()
    with BNStatsRecorder(teacher.net) as rec:
        for _ in range(s.epochs):
            rec.enabled = False
            for _ in range(s.imitate_steps):
                with torch.no_grad():
                    xn = delegator(delegator.codes(s.batch_size, generator))
                    t_feat, _ = teacher_view(xn)
                s_feat, _ = features_of(student, xn, compare)
                imitate = feature_cosine_discrepancy(t_feat, s_feat)
                opt_s.zero_grad(set_to_none=True)
                imitate.backward()
                opt_s.step()
            _log(history, {"imitate": imitate})
            for _ in range(s.explore_steps):
                rec.enabled = True
                xn = delegator(delegator.codes(s.batch_size, generator))
                t_feat, t_logits = teacher_view(xn)
                rec.enabled = False
                s_feat, _ = features_of(student, xn, compare)
                terms = {"explore": -s.lam * feature_cosine_discrepancy(t_feat, s_feat)}
                if s.w_cat:
                    terms["cat"] = s.w_cat * pseudo_label_cross_entropy(t_logits)
                if s.w_div:
                    terms["div"] = s.w_div * class_balance_loss(t_logits)
                if s.w_feature:
                    terms["feature"] = s.w_feature * bn_norm_loss(rec.stats)
                opt_g.zero_grad(set_to_none=True)
                sum(terms.values()).backward()
                opt_g.step()
                _log(history, terms)
            for sched in scheds:
                sched.step()
            if task is not None:
                progress.advance(task)
    if task is not None:
        progress.remove(task)
    for p in trainable:
        p.requires_grad_(True)
    student.eval()
    delegator.eval()
    tail = max(1, s.epochs // 10)
    return {k: sum(v[-tail:]) / len(v[-tail:]) for k, v in history.items()}


def _log(history: dict[str, list[float]], terms: dict[str, torch.Tensor]) -> None:
    for k, v in terms.items():
        history.setdefault(k, []).append(float(v.detach()))
