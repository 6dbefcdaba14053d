"""Ex-Model Distillation targets and loss (Carta et al. 2021, Eq. 6-11), as pure functions.

For a buffer sample with label y, the target logits ỹ come from the previous ex-model for classes it
already knows (Y_prev), from the current expert for the expert's classes (Y_i), and their mean where
both apply (Eq. 9). Both models' logits are normalized first (Eq. 6-7) so that their different scales
do not bias the combination. Units a model does not have (an expert with a local head) carry no target
(NaN) and are left out of the MSE. The loss is MSE(y_curr, ỹ) + λ_CE · CE(y_curr, y) (Eq. 10-11).

Multi-task streams pass ``allowed``, a (B, K) mask of each sample's task classes: the teachers'
logits outside it carry no target, normalization runs over the task's units only, and the CE is a
softmax over the task's classes, so one shared head over the global label space acts as one head per
task (the multi-head classifier of the paper's MT setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exmodel.logits import NORMALIZATIONS, normalize_logits  # noqa: F401  (Eq. 6-7; re-exported)

def ed_targets(prev_logits: torch.Tensor | None, expert_logits: torch.Tensor, y: torch.Tensor,
               prev_classes: torch.Tensor, expert_classes: torch.Tensor, mode: str = "standardize",
               allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9. ``prev_classes``/``expert_classes`` are boolean masks over the K global classes (Y_prev,
    Y_i); ``expert_logits`` is (B, K) with NaN where the expert has no output unit. Samples whose label
    belongs to neither model's classes take the expert's target (cannot happen with the buffer of
    Algorithm 1, whose labels always come from some expert). ``allowed`` (B, K), multi-task only:
    the units that may carry a target (each sample's task classes)."""
    if allowed is not None:
        expert_logits = expert_logits.masked_fill(~allowed, float("nan"))
        prev_logits = None if prev_logits is None else prev_logits.masked_fill(~allowed, float("nan"))
    y_s = normalize_logits(expert_logits, mode)
    if prev_logits is None:
        return y_s
    y_m = normalize_logits(prev_logits, mode)
    in_prev = prev_classes[y].unsqueeze(1)
    in_exp = expert_classes[y].unsqueeze(1)
    both = torch.where(torch.isnan(y_s), y_m, 0.5 * (y_s + y_m))
    return torch.where(in_prev & in_exp, both, torch.where(in_prev, y_m, y_s))


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 10: squared L2 distance per sample over the units that have a target, mean over the batch."""
    valid = ~torch.isnan(target)
    diff = torch.where(valid, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum(1).mean()


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor | None = None,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE of a softmax over each sample's ``allowed`` classes (all of them if None); a fraction
    ``label_smoothing`` of the target is spread uniformly over those classes. ``y`` holds class
    indices (B,) or, without ``allowed``, class probabilities (B, K) (mixup)."""
    if allowed is None:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if y.dim() != 1:
        raise ValueError("masked_cross_entropy: soft labels cannot be restricted to allowed classes")
    if not bool(allowed.gather(1, y.view(-1, 1)).all()):
        raise ValueError("masked_cross_entropy: a label lies outside its sample's allowed classes")
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), 1)
    nll = -logp.gather(1, y.view(-1, 1)).squeeze(1)
    if not label_smoothing:
        return nll.mean()
    uniform = -torch.where(allowed, logp, torch.zeros_like(logp)).sum(1) / allowed.sum(1)
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()


def soft_labels(y: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mixup's CE labels: class probabilities (B, K) ``lam·onehot(y) + (1 − lam)·onehot(y[perm])``."""
    eye = torch.eye(num_classes, device=y.device)
    lam = lam.view(-1, 1).to(eye.dtype)
    return lam * eye[y] + (1 - lam) * eye[y[perm]]


def mix_targets(target_a: torch.Tensor, target_b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mixup of two (B, K) target rows with per-sample weights ``lam`` (B,): λ·a + (1 − λ)·b; a unit
    that has a target in only one of them keeps that one, and NaN where neither has one."""
    lam = lam.view(-1, 1).to(target_a.dtype)
    mixed = lam * target_a + (1 - lam) * target_b
    return torch.where(torch.isnan(target_a), target_b, torch.where(torch.isnan(target_b), target_a, mixed))


def ed_loss(student_logits: torch.Tensor, targets: torch.Tensor, y: torch.Tensor, lambda_ce: float,
            mse_weight: float = 1.0, label_smoothing: float = 0.0,
            allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 11; returns (total, mse, ce). ``label_smoothing`` ε (ours, 0 in the paper) spreads ε of the
    CE target uniformly over the classes; ``allowed`` restricts the CE softmax (multi-task); ``y`` may
    be class probabilities (B, K) instead of indices (mixup)."""
    mse = masked_mse(student_logits, targets)
    ce = masked_cross_entropy(student_logits, y, allowed, label_smoothing)
    return mse_weight * mse + lambda_ce * ce, mse, ce
