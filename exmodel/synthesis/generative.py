"""Generative inversion: train a small conditional generator against the expert, then sample it.

Pixel-level inversion (:mod:`~exmodel.synthesis.inversion`) optimises every image on its own; each
pixel is free, and an expert trained on two classes is easily satisfied by high-frequency patterns
that no real image has. Here a convolutional generator ``G(z, y)`` is trained instead (as in DAFL,
Chen et al. 2019, and the knowledge delegator of SKD): its upsampling convolutions can only draw
smooth, spatially coherent images (the "deep image prior"), one network covers every sample of a
class, and once trained it samples any number of images for the price of a forward pass.

Each of ``steps`` Adam steps draws a batch of codes ``z ~ N(0, I)`` and class-balanced targets ``y``
among the requested classes and minimises, on ``x = G(z, y)``,

    CE(f(aug(x)) / τ, y)  +  w_bn·Σ_BN (||μ − μ_syn||² + ||σ − σ_syn||²)  +  w_div·diversity(features)
                          +  w_l1·Σ x01  +  w_tv·TV(x)

with the same priors as model inversion (:mod:`~exmodel.synthesis.priors`). The generator ends in a
sigmoid, so its images are valid [0, 1] images by construction.

The BN term needs an expert with BatchNorm layers. For an expert without them, ``prior: auto`` (the
default) replaces it by the ``bn_free`` prior

    w_input·(||μ(x̂)||² + ||σ(x̂) − 1||²)  −  w_act·mean |features|

on the normalized images ``x̂ = (x − mean) / std``: the expert's input normalization holds its
training data's per-channel pixel mean and std, so real normalized pixels have mean 0 and std 1 (a
BN layer in front of the network with known statistics), and DAFL's activation term (Chen et al.
2019) asks for images that excite the expert's penultimate features as real ones do. For an expert
with BN layers nothing changes (same losses, same images). ``prior`` forces ``bn``, ``bn_free`` or
``none``. After training, ``n`` images are
sampled with fresh codes; with ``relabel`` each takes the expert's prediction among the requested
classes as its label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from exmodel.data.types import ImageDataset
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.augment import make_augmentation
from exmodel.synthesis.base import (KnowledgeSource, balanced_labels, check_count, expert_device, fit_input,
                                    frozen_expert, predict_among, register_source, resolve_classes,
                                    seeded_global_rng)
from exmodel.synthesis.guide import Guide, guided_cross_entropy
from exmodel.synthesis.inversion import features_and_logits, local_index
from exmodel.synthesis.objective import PriorParams, prior_terms
from exmodel.synthesis.priors import BNStatsRecorder, activation_loss, input_moments_loss
from exmodel.synthesis.upsample import Upsample2


class ConditionalGenerator(nn.Module):
    """``(z, class index) -> image in [0, 1]`` of shape ``(C, H, W)``: a linear layer to a
    ``width × H/4 × W/4`` map, two ×2 nearest upsamplings each followed by a 3×3 convolution,
    BatchNorm and LeakyReLU, and a final 3×3 convolution with a sigmoid. The class enters as a
    learned embedding multiplied into the code (as in conditional DCGANs)."""

    def __init__(self, num_classes: int, shape: Sequence[int], z_dim: int = 64, width: int = 16) -> None:
        super().__init__()
        c, h, w = (int(v) for v in shape)
        self.shape = (c, h, w)
        self.z_dim = z_dim
        self.h0, self.w0 = max(1, -(-h // 4)), max(1, -(-w // 4))
        self.embed = nn.Embedding(num_classes, z_dim)
        units = 2 * width * self.h0 * self.w0
        self.fc = nn.Sequential(nn.Linear(z_dim, units), nn.BatchNorm1d(units))
        self.body = nn.Sequential(
            Upsample2(), nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            Upsample2(), nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1),
        )
        self.width = width

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z * self.embed(y)).view(len(z), 2 * self.width, self.h0, self.w0)
        x = self.body(h)
        if x.shape[-2:] != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class GenerativeParams(PriorParams):
    w_bn: float = Field(1.0, ge=0, description="weight of BN statistics matching (experts with BN only)")
    steps: int = Field(500, ge=1, description="generator training steps")
    batch_size: int = Field(128, ge=2, description="images per generator step (BN statistics need ≥ 2)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the generator")
    z_dim: int = Field(64, ge=1)
    width: int = Field(16, ge=1, description="channels of the generator's last hidden layer")
    generators: int = Field(1, ge=1, description="independent generators (each trained for `steps`), each "
                                                 "drawing an equal share of the samples: more modes covered")
    relabel: bool = Field(True, description="label each sample with the expert's prediction among the classes")
    w_guide: float = Field(0.0, ge=0, description="weight of the combined old/new class loss with the previous "
                                                  "ex-model as guide (see guide.py); 0: off")
    prior: Literal["auto", "bn", "bn_free", "none"] = Field(
        "auto", description="the realism prior: 'bn' matches the expert's BatchNorm statistics (w_bn; nothing "
                            "for an expert without BN), 'bn_free' needs no BN (w_input, w_act), 'none' neither; "
                            "'auto' picks 'bn' for an expert with BN layers, 'bn_free' for one without")
    w_input: float = Field(1.0, ge=0, description="bn_free prior: weight of matching the batch's per-channel mean "
                                                  "and std of normalized pixels to 0 and 1 (the expert's input "
                                                  "normalization, i.e. its training data's pixel statistics)")
    w_act: float = Field(0.1, ge=0, description="bn_free prior: weight of DAFL's activation loss, "
                                                "−mean |penultimate features|")
    bn_groups: Literal["auto", "batch", "class"] = Field(
        "auto", description="BN statistics matched by the whole batch or by each class on its own; 'auto': per "
                            "class for statistics borrowed from peers (synthesis/borrowed.py), whose data had "
                            "other classes, per batch for the expert's own")


def bn_free_terms(p: GenerativeParams, xn: torch.Tensor, features: torch.Tensor) -> torch.Tensor | float:
    """The ``bn_free`` prior: ``w_input·input_moments(xn) + w_act·activation(features)`` on the
    normalized images ``xn`` (before augmentation) and the expert's penultimate features."""
    loss: torch.Tensor | float = 0.0
    if p.w_input:
        loss = loss + p.w_input * input_moments_loss(xn)
    if p.w_act:
        loss = loss + p.w_act * activation_loss(features)
    return loss


@register_source("generative")
class GenerativeInversion(KnowledgeSource):
    """See the module docstring."""

    Params = GenerativeParams
    accepts_guide: ClassVar[bool] = True
    _kept: tuple | None = None  # (expert, classes, generators) of the last generate(), for redraw()

    def train_generator(self, expert: Expert, chosen: list[int], generator: torch.Generator,
                        progress: Progress | None = None, guide: Guide | None = None) -> ConditionalGenerator:
        p: GenerativeParams = self.params  # type: ignore[assignment]
        device = expert_device(expert)
        mean, std = expert.mean.to(device), expert.std.to(device)
        classes = torch.tensor(chosen, dtype=torch.long)
        targets_of = local_index(expert, classes).to(device)  # expert output unit of each chosen class
        guided = guide is not None and p.w_guide > 0 and bool(guide.classes.any())
        global_of, columns = classes.to(device), targets_of.tolist()  # for the guide: global id, expert unit
        aug = make_augmentation(p.translate, p.degrees, p.hflip, kind=p.augment)
        task = progress.add(f"generator ({expert.card.name})", total=p.steps) if progress is not None else None
        with frozen_expert(expert), seeded_global_rng(generator, device), BNStatsRecorder(expert.net) as rec:
            gen = ConditionalGenerator(len(chosen), expert.card.input_shape, p.z_dim, p.width).to(device)
            opt = torch.optim.Adam(gen.parameters(), lr=p.lr, betas=(0.5, 0.999))
            prior = p.prior if p.prior != "auto" else ("bn" if len(rec) > 0 else "bn_free")
            use_bn = prior == "bn" and p.w_bn > 0 and len(rec) > 0
            bn_free = prior == "bn_free"
            rec.enabled = use_bn
            per_class = p.bn_groups == "class" or (p.bn_groups == "auto" and getattr(expert.net, "borrowed", False))
            gen.train()
            for _ in range(p.steps):
                k = balanced_labels(range(len(chosen)), p.batch_size, generator).to(device)
                z = torch.randn(p.batch_size, p.z_dim, generator=generator).to(device)
                rec.groups = k if per_class else None
                x01 = gen(z, k)
                xn = (x01 - mean) / std
                feats, logits = features_and_logits(expert.net, aug(xn), expert.card.task_id)
                loss = F.cross_entropy(logits / p.temperature, targets_of[k]) + prior_terms(
                    p, x01=x01, tv_input=x01, features=feats, labels=k, bn=rec if use_bn else None)
                if bn_free:
                    loss = loss + bn_free_terms(p, xn, feats)
                if guided:
                    g = guide.model(fit_input(x01, guide.input_shape))
                    loss = loss + p.w_guide * guided_cross_entropy(g, logits, global_of[k], guide.classes, columns,
                                                                   chosen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if task is not None:
                    progress.advance(task)  # type: ignore[union-attr]
        if task is not None:
            progress.remove(task)  # type: ignore[union-attr]
        return gen.eval()

    @torch.no_grad()
    def sample(self, gen: ConditionalGenerator, classes: list[int], y: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
        """Images for the global labels ``y`` (each one of ``classes``), in [0, 1] on the CPU."""
        device = next(gen.parameters()).device
        lut = {c: i for i, c in enumerate(classes)}
        k = torch.tensor([lut[int(c)] for c in y], dtype=torch.long)
        out = []
        for start in range(0, len(y), 512):
            kk = k[start:start + 512]
            z = torch.randn(len(kk), gen.z_dim, generator=generator)
            out.append(gen(z.to(device), kk.to(device)).float().cpu())
        return torch.cat(out) if out else torch.empty((0, *gen.shape))

    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None, guide: Guide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`KnowledgeSource.generate`; ``guide`` (the previous ex-model) is used when ``w_guide > 0``."""
        check_count(n)
        chosen = resolve_classes(expert, classes)
        y = balanced_labels(chosen, n, generator)
        if n == 0:
            return torch.empty((0, *expert.card.input_shape)), y
        x01 = torch.empty((n, *expert.card.input_shape))
        k = self.params.generators  # type: ignore[attr-defined]
        gens = []
        for j in range(min(k, n)):  # generator j draws the samples j, j + k, j + 2k, ...
            gens.append(self.train_generator(expert, chosen, generator, progress, guide))
            x01[j::k] = self.sample(gens[-1], chosen, y[j::k], generator)
        self._kept = (expert, chosen, gens)
        return x01, self._label(expert, x01, y, chosen)

    def _label(self, expert: Expert, x01: torch.Tensor, y: torch.Tensor, chosen: list[int]) -> torch.Tensor:
        return predict_among(expert, x01, chosen) if self.params.relabel else y  # type: ignore[attr-defined]

    def redraw(self, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._kept is None:
            return None
        expert, chosen, gens = self._kept
        y = y.cpu()
        which = torch.randint(len(gens), (len(y),), generator=generator)
        x01 = torch.empty((len(y), *expert.card.input_shape))
        for j, gen in enumerate(gens):
            m = which == j
            if m.any():
                x01[m] = self.sample(gen, chosen, y[m], generator)
        return x01, self._label(expert, x01, y, chosen)

    def release(self) -> None:
        self._kept = None
