"""The class-incremental baselines' losses, as pure functions of tensors.

* :func:`lwf_mc_loss` — LwF's multi-class form as iCaRL trains it (Rebuffi et al. 2017, Sec. 2.4;
  Eq. 1 of the M²KD paper): one sigmoid per class seen so far; the new classes' targets are the
  one-hot labels, the old classes' targets the previous model's sigmoid outputs.
* :func:`multi_model_distillation_loss` — M²KD's Eq. 2: LwF-MC's loss where each old class group's
  units are distilled from the model of the step that brought that group, not from the last model;
* :func:`auxiliary_distillation_loss` — M²KD's Eq. 3: the same for the auxiliary classifier on an
  intermediate feature map, plus α · BCE of every seen unit against the labels;
* :func:`distillation_kl` — Hinton et al.'s knowledge distillation, ``T² · KL(softmax(z_old/T) ‖
  softmax(z/T))`` averaged over the batch (LwF's loss with T = 2);
* :func:`aligned_weights` — weight aligning (Zhao et al. 2020, Eq. 5): the new classes' head weights
  scaled so that their mean norm equals the old classes', against the bias towards new classes;
* :func:`quadratic_penalty` — ``Σ_i Ω_i (θ_i − θ*_i)²``, the anchor term that EWC (Ω = Fisher),
  online EWC, SI (Ω = path integral) and MAS (Ω = output sensitivity) share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F


def lwf_mc_loss(logits: torch.Tensor, labels: torch.Tensor, old_logits: torch.Tensor | None,
                old_classes: Sequence[int], seen: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy summed over the ``seen`` classes' units, averaged over the batch.

    ``logits``/``old_logits``: ``(B, K)`` over the whole label space (``old_logits`` from the frozen
    previous model, ``None`` on the first task). Units outside ``seen`` take no part. The old units'
    targets are ``sigmoid(old_logits / temperature)``: 1 in iCaRL's paper, 2 in van de Ven et al.'s code.
    """
    seen_idx = torch.as_tensor(list(seen), dtype=torch.long, device=logits.device)
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if old_logits is not None and len(old_classes):
        old_idx = torch.as_tensor(list(old_classes), dtype=torch.long, device=logits.device)
        targets[:, old_idx] = torch.sigmoid(old_logits[:, old_idx] / temperature)
    per_unit = F.binary_cross_entropy_with_logits(logits[:, seen_idx], targets[:, seen_idx], reduction="none")
    return per_unit.sum(dim=1).mean()


def quadratic_penalty(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor],
                      importances: Iterable[torch.Tensor]) -> torch.Tensor:
    """``Σ Ω · (θ − θ*)²`` over matching parameter tensors (0 when there are none)."""
    total = None
    for p, a, w in zip(params, anchors, importances, strict=True):
        term = (w * (p - a) ** 2).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def aligned_weights(weight: torch.Tensor, old: Sequence[int], new: Sequence[int]) -> torch.Tensor:
    """``weight`` (K, D) with the rows of ``new`` multiplied by ``mean ‖w_old‖ / mean ‖w_new‖``."""
    out = weight.clone()
    if not len(old) or not len(new):
        return out
    norms = weight.norm(dim=1)
    ratio = norms[list(old)].mean() / norms[list(new)].mean().clamp_min(1e-12)
    out[list(new)] = weight[list(new)] * ratio
    return out


def distillation_kl(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(p_old ‖ p)`` with ``p = softmax(logits / T)``, batch mean (the T² keeps the gradient
    scale of the hard-label loss)."""
    t = temperature
    log_p = F.log_softmax(logits / t, dim=1)
    p_old = F.softmax(old_logits / t, dim=1)
    return (t * t) * (p_old * (torch.log(p_old.clamp_min(1e-12)) - log_p)).sum(1).mean()


def group_targets(shape: torch.Size, teachers: Sequence[tuple[Sequence[int], torch.Tensor]]
                  ) -> tuple[torch.Tensor, list[int]]:
    """``(B, K)`` logits whose columns of each group come from that group's teacher, and the classes
    they cover. ``teachers``: ``(classes, teacher logits (B, K))`` per old class group."""
    out, covered = None, []
    for classes, logits in teachers:
        if out is None:
            out = torch.zeros(shape, dtype=logits.dtype, device=logits.device)
        idx = list(classes)
        out[:, idx] = logits[:, idx]
        covered += idx
    if len(set(covered)) != len(covered):
        raise ValueError(f"class groups overlap: {covered}")
    return out, covered


def multi_model_distillation_loss(logits: torch.Tensor, labels: torch.Tensor,
                                  teachers: Sequence[tuple[Sequence[int], torch.Tensor]], seen: Sequence[int],
                                  temperature: float = 1.0) -> torch.Tensor:
    """Eq. 2 of M²KD: binary cross-entropy summed over the ``seen`` units, batch mean; the units of old
    group k target ``sigmoid(teacher_k / T)``, the other seen units the one-hot labels. With one
    teacher for every old class it is :func:`lwf_mc_loss`."""
    old, covered = group_targets(logits.shape, teachers)
    return lwf_mc_loss(logits, labels, old, covered, seen, temperature)


def auxiliary_distillation_loss(aux_logits: torch.Tensor, labels: torch.Tensor,
                                teachers: Sequence[tuple[Sequence[int], torch.Tensor]], seen: Sequence[int],
                                alpha: float, labels_on_old_units: bool = True) -> torch.Tensor:
    """Eq. 3 of M²KD: BCE of the old groups' auxiliary units against their step's auxiliary sigmoid
    outputs, plus ``alpha`` × BCE of every seen unit against the one-hot labels (the paper keeps the
    ground truth on all units here), both summed over units and averaged over the batch.
    ``labels_on_old_units=False`` puts the labels on the units no teacher covers only, as Eq. 2 does."""
    old, covered = group_targets(aux_logits.shape, teachers)
    hard_units = list(seen) if labels_on_old_units else [c for c in seen if c not in set(covered)]
    hard_idx = torch.as_tensor(hard_units, dtype=torch.long, device=aux_logits.device)
    onehot = F.one_hot(labels, aux_logits.shape[1]).to(aux_logits.dtype)
    hard = F.binary_cross_entropy_with_logits(aux_logits[:, hard_idx], onehot[:, hard_idx], reduction="none")
    total = alpha * hard.sum(dim=1).mean()
    if covered:
        idx = torch.as_tensor(covered, dtype=torch.long, device=aux_logits.device)
        soft = F.binary_cross_entropy_with_logits(aux_logits[:, idx], torch.sigmoid(old[:, idx]), reduction="none")
        total = total + soft.sum(dim=1).mean()
    return total
