"""Model inversion (paper Sec. 4): optimise random images until the expert sees the target class.

For each sample we pick a target class (class-balanced over the requested classes), start from
Gaussian noise ``x ~ N(0, 1)`` in the expert's *normalized* input space (where its training data had
zero mean and unit variance per channel), and minimise with Adam

    CE(f(aug(x)) / τ, y)  +  w_l2·||x||²  +  w_blur·||x − blur(x)||²  +  w_tv·TV(x)
                          +  w_bn·Σ_BN (||μ − μ_syn||² + ||σ − σ_syn||²)  +  w_div·diversity(features)

where ``f`` is the expert's network, ``y`` the target's index among the expert's output units, and
the priors are those of Sec. 4.1 (:mod:`exmodel.synthesis.priors`; the BN term only for experts with
BatchNorm layers, the TV and diversity terms are extras, off by default). Images are optimised in
independent batches of ``batch_size``; a batch stops after ``steps`` Adam steps, or earlier once the
expert gives *every* sample of the batch its target with softmax probability ≥ ``confidence``
(checked on the un-augmented images every ``check_every`` steps; the paper trains until p > 0.99).
After every Adam step the pixels are projected back onto the valid range (the image of [0, 1]
under the normalization), so what the expert was optimised on is exactly the [0, 1] image returned
(``x·std + mean``); the initial noise is projected the same way.

:func:`optimise_images` is the optimisation loop shared with data impression.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from exmodel.data.types import ImageDataset
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.augment import make_augmentation
from exmodel.synthesis.base import (KnowledgeSource, balanced_labels, check_count, expert_device, frozen_expert,
                                    num_batches, predict_among, register_source, resolve_classes, seeded_global_rng)
from exmodel.synthesis.objective import PriorParams, prior_terms
from exmodel.synthesis.priors import BNStatsRecorder, blur_prior, l2_prior


class OptimisationParams(PriorParams):
    """Settings shared by the sources that optimise pixels (inversion, impression).

    The paper gives no weights. The priors are per-sample sums over pixels (see
    :mod:`~exmodel.synthesis.priors`); the defaults are sized for 28×28 to 32×32 images, where a
    normalized image has ``||x||²`` of a few hundred, ``||x − blur(x)||²`` of 50 to 500 and the BN
    term of 10 to 200, so that each prior adds about 0.05 to 0.2 next to a target loss of about 1.
    A larger BN weight (1e-2) keeps a LeNet-BN expert trained on two digits from ever becoming
    confident on batches of a single class: one class cannot match statistics recorded on two.
    """

    batch_size: int = Field(256, ge=1, description="images optimised together")
    steps: int = Field(200, ge=1, description="Adam steps per batch (upper bound)")
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the normalized pixels")
    init_std: float = Field(1.0, gt=0, description="std of the initial Gaussian noise in normalized units "
                                                   "(centred on the dataset mean)")
    w_l2: float = Field(1e-4, ge=0, description="weight of ||x||² (paper: L2 prior)")
    w_blur: float = Field(1e-3, ge=0, description="weight of ||x − blur(x)||² (paper: blur prior)")


def features_and_logits(net: nn.Module, x: torch.Tensor, task_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) of an ExModelNet; for another network the logits stand in
    for the features."""
    if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
        feats = net.forward_features(x)
        return feats, net.forward_head(feats, task_id)
    logits = net(x, task_id=task_id)
    return logits, logits


# (logits (B, K), batch index into the sample arrays) -> scalar target loss
TargetLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (clean logits, batch index) -> True when the batch may stop early
StopRule = Callable[[torch.Tensor, torch.Tensor], bool]


def optimise_images(expert: Expert, n: int, generator: torch.Generator, p: OptimisationParams,
                    target_loss: TargetLoss, div_labels: torch.Tensor, *, stop: StopRule | None = None,
                    check_every: int = 10, progress: Progress | None = None,
                    description: str = "synthesis") -> torch.Tensor:
    """Optimise ``n`` images against ``expert`` batch by batch; returns them in [0, 1] on the CPU.

    ``target_loss(logits, idx)`` scores the expert's (augmented) logits of the samples ``idx``;
    ``div_labels[idx]`` groups samples for the diversity term; ``stop(clean_logits, idx)`` may end a
    batch early. The initial noise comes from ``generator``; augmentation draws its parameters from
    the global RNG seeded from ``generator`` (restored afterwards).
    """
    card = expert.card
    device = expert_device(expert)
    mean, std = expert.mean.to(device), expert.std.to(device)
    # Valid pixels [0, 1] in normalized units; x is kept inside after every step (projected
    # gradient descent), so the final clamp to [0, 1] changes nothing the expert was shown.
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    x0 = p.init_std * torch.randn((n, *card.input_shape), generator=generator)
    aug = make_augmentation(p.translate, p.degrees, p.hflip, kind=p.augment)
    batches = num_batches(n, p.batch_size)
    task = progress.add(description, total=batches * p.steps) if progress is not None and batches else None
    out = []
    with frozen_expert(expert), seeded_global_rng(generator, device), BNStatsRecorder(expert.net) as rec:
        use_bn = p.w_bn > 0 and len(rec) > 0
        rec.enabled = use_bn
        for b in range(batches):
            idx = torch.arange(b * p.batch_size, min(n, (b + 1) * p.batch_size))
            x = torch.maximum(torch.minimum(x0[idx].to(device), hi), lo).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=p.lr)
            labels = div_labels[idx].to(device)
            done = 0
            for step in range(p.steps):
                feats, logits = features_and_logits(expert.net, aug(x), card.task_id)
                loss = target_loss(logits, idx) + prior_terms(p, x01=x * std + mean, tv_input=x, features=feats,
                                                              labels=labels, bn=rec if use_bn else None)
                if p.w_l2:
                    loss = loss + p.w_l2 * l2_prior(x)
                if p.w_blur:
                    loss = loss + p.w_blur * blur_prior(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                done = step + 1
                if task is not None:
                    progress.advance(task)  # type: ignore[union-attr]
                if stop is not None and done % check_every == 0 and done < p.steps:
                    rec.enabled = False
                    with torch.no_grad():
                        clean = expert.net(x, task_id=card.task_id)
                    rec.enabled = use_bn
                    if stop(clean, idx):
                        break
            if task is not None and done < p.steps:
                progress.advance(task, p.steps - done)  # type: ignore[union-attr]
            out.append((x.detach() * std + mean).clamp_(0.0, 1.0).float().cpu())
    if task is not None:
        progress.remove(task)  # type: ignore[union-attr]
    return torch.cat(out) if out else torch.empty((0, *card.input_shape))


def local_index(expert: Expert, global_labels: torch.Tensor) -> torch.Tensor:
    """Index of each global label among the expert's output units (``card.class_ids``)."""
    lut = {c: i for i, c in enumerate(expert.card.class_ids)}
    return torch.tensor([lut[int(c)] for c in global_labels], dtype=torch.long)


class InversionParams(OptimisationParams):
    confidence: float | None = Field(0.99, gt=0, le=1,
                                     description="stop a batch once every target has this probability; None: never")
    check_every: int = Field(10, ge=1, description="steps between two early-stopping checks")
    relabel: bool = Field(False, description="label each image with the expert's final prediction among the "
                                             "requested classes (priors can win over the target: no label noise)")


@register_source("model_inversion")
class ModelInversion(KnowledgeSource):
    """Paper Sec. 4, "Model Inversion"; see the module docstring."""

    Params = InversionParams

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_count(n)
        p: InversionParams = self.params  # type: ignore[assignment]
        chosen = resolve_classes(expert, classes)
        y = balanced_labels(chosen, n, generator)
        device = expert_device(expert)
        targets = local_index(expert, y).to(device)

        def ce(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits / p.temperature, targets[idx.to(device)])

        stop = None
        if p.confidence is not None:
            threshold = p.confidence

            def stop(clean: torch.Tensor, idx: torch.Tensor) -> bool:
                prob = clean.softmax(1).gather(1, targets[idx.to(device)].view(-1, 1))
                return bool((prob >= threshold).all())

        x01 = optimise_images(expert, n, generator, p, ce, y, stop=stop, check_every=p.check_every,
                              progress=progress, description=f"model inversion ({expert.card.name})")
        if p.relabel:
            y = predict_among(expert, x01, chosen)
        return x01, y

