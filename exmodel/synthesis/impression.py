"""Data impression (Nayak et al. 2019; paper Sec. 4): soft targets that know which classes look alike.

Model inversion asks for a one-hot target and so ignores that some classes resemble each other.
Data impression reads class similarities off the expert's classifier: row ``w_k`` of the head weight
``W`` is a template for class ``k``, and ``C(k, j) = cos(w_k, w_j)`` (:func:`class_similarity`).
For a sample meant to be class ``k`` it draws a soft target ``y_di ~ Dir(α_k)`` whose concentration
follows row ``k`` of ``C`` (:func:`dirichlet_concentration`), then optimises a random image with the
distillation loss ``KL(y_di || softmax(f(x)/τ))·τ²`` plus the natural-image priors of model
inversion (the same loop, :func:`exmodel.synthesis.inversion.optimise_images`; no early stop, since a
soft target has no confidence threshold). The hard label handed to distillation is
``argmax y_di`` (paper: "we set y_syn = argmax y_di"), which is usually, not always, ``k``.

Which output units take part (``similarity_over``): ``"trained"`` (default) uses the units of the
classes the expert was trained on; ``"all"`` every output unit (for a full-head expert the untrained
units' rows were never fit to data, so their similarities are mostly noise).

Cosines may be negative, and a Dirichlet needs positive concentrations: as in the original paper each
row of ``C`` is min-max scaled to [0, 1] first (its own class, cosine 1, becomes 1), then
``α_k = β·ĉ_k + ε`` with ``ε = 1e-3``.

Sampling: ``torch.distributions.Dirichlet.sample`` takes no generator, so the targets are drawn with
torch's global RNG inside :func:`~exmodel.synthesis.base.seeded_global_rng` (forked and seeded from
the source's generator, restored afterwards), which makes them reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.base import (KnowledgeSource, balanced_labels, check_count, expert_device, register_source,
                                    resolve_classes, seeded_global_rng)
from exmodel.synthesis.inversion import OptimisationParams, optimise_images

CONCENTRATION_EPS = 1e-3  # keeps every Dirichlet concentration strictly positive


def class_similarity(weight: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix ``C[k, j] = w_kᵀw_j / (||w_k|| ||w_j||)`` of the rows of ``weight``
    (K, D), computed on the CPU. A zero row has similarity 0 with everything."""
    if weight.ndim != 2:
        raise ValueError(f"class_similarity: expected a (K, D) weight matrix, got {tuple(weight.shape)}")
    # On the CPU, so that the Dirichlet targets built from it use the seeded CPU generator.
    unit = F.normalize(weight.detach().float().cpu(), dim=1)
    return unit @ unit.T


def dirichlet_concentration(similarity: torch.Tensor, beta: float, eps: float = CONCENTRATION_EPS) -> torch.Tensor:
    """``α = β·ĉ + eps`` row by row, ``ĉ`` = the row min-max scaled to [0, 1].

    A constant row (e.g. a single class) scales to all ones. ``beta`` must be > 0.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"dirichlet_concentration: expected a square matrix, got {tuple(similarity.shape)}")
    if not beta > 0:
        raise ValueError(f"dirichlet_concentration: beta must be > 0, got {beta}")
    lo = similarity.min(dim=1, keepdim=True).values
    hi = similarity.max(dim=1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (similarity - lo) / span.clamp_min(1e-12), torch.ones_like(similarity))
    return beta * scaled + eps


def head_weight(expert: Expert) -> torch.Tensor:
    """The expert's classifier weight (rows = output units, in ``card.class_ids`` order)."""
    net = expert.net
    head: nn.Module | None = None
    if getattr(net, "is_multihead", False):
        heads = getattr(net, "heads", None)
        tid = expert.card.task_id
        if heads is not None and tid is not None and 0 <= tid < len(heads):
            head = heads[tid]
    else:
        head = getattr(net, "head", None)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[0] != len(expert.card.class_ids):
        raise ConfigError(f"data impression: expert '{expert.card.name}' ({expert.card.arch}) has no linear head "
                          f"with one row per output unit; use another knowledge source")
    return weight


class ImpressionParams(OptimisationParams):
    beta: float = Field(1.0, gt=0, description="Dirichlet scale β (Nayak et al. use 1.0 and 0.1)")
    similarity_over: Literal["trained", "all"] = Field(
        "trained", description="output units the soft targets cover: the trained classes or all units")


@register_source("data_impression")
class DataImpression(KnowledgeSource):
    """Paper Sec. 4, "Data Impression"; see the module docstring."""

    Params = ImpressionParams

    def units(self, expert: Expert) -> list[int]:
        """Global ids of the output units the soft targets cover."""
        p: ImpressionParams = self.params  # type: ignore[assignment]
        return list(expert.card.trained_class_ids if p.similarity_over == "trained" else expert.card.class_ids)

    def sample_targets(self, expert: Expert, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One soft target (over :meth:`units`) per entry of ``classes`` (global ids)."""
        p: ImpressionParams = self.params  # type: ignore[assignment]
        units = self.units(expert)
        cols = [list(expert.card.class_ids).index(u) for u in units]
        alpha = dirichlet_concentration(class_similarity(head_weight(expert)[cols]), p.beta)
        rows = torch.tensor([units.index(int(c)) for c in classes], dtype=torch.long)
        if len(rows) == 0:
            return torch.empty((0, len(units)))
        with seeded_global_rng(generator):
            return torch.distributions.Dirichlet(alpha[rows]).sample()

    def generate_with_targets(self, expert: Expert, n: int, generator: torch.Generator, *,
                              classes: Sequence[int] | None = None,
                              progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`generate`, also returning the soft targets (n, len(units))."""
        check_count(n)
        p: ImpressionParams = self.params  # type: ignore[assignment]
        chosen = resolve_classes(expert, classes)
        units = self.units(expert)
        missing = [c for c in chosen if c not in units]
        if missing:
            raise ValueError(f"data impression: classes {missing} are not among the {p.similarity_over} "
                             f"output units {units} of expert '{expert.card.name}'")
        wanted = balanced_labels(chosen, n, generator)
        targets = self.sample_targets(expert, wanted, generator)
        y = torch.tensor(units, dtype=torch.long)[targets.argmax(1)] if n else torch.empty(0, dtype=torch.long)
        device = expert_device(expert)
        cols = torch.tensor([list(expert.card.class_ids).index(u) for u in units], dtype=torch.long, device=device)
        soft = targets.to(device)
        tau = p.temperature

        def kd(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            log_p = F.log_softmax(logits[:, cols] / tau, dim=1)
            return F.kl_div(log_p, soft[idx.to(device)], reduction="batchmean") * tau**2

        x01 = optimise_images(expert, n, generator, p, kd, y, progress=progress,
                              description=f"data impression ({expert.card.name})")
        return x01, y, targets

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x01, y, _ = self.generate_with_targets(expert, n, generator, classes=classes, progress=progress)
        return x01, y
