"""The knowledge delegator's losses (SKD, Sec. III-B and III-C), as pure functions.

* :func:`feature_cosine_discrepancy` — ψ (Eq. 1): ``1 − cos(nor(F_T(x)), nor(F_S(x)))``, averaged
  over the batch. The imitate phase minimises it (Eq. 2), the explore phase maximises it (Eq. 3),
  and the incremental step uses it as the feature-consolidation loss ``L_fc`` (Eq. 9);
* :func:`pseudo_label_cross_entropy` — ``L_cat`` (Eq. 4): cross-entropy of the teacher's scores
  against its own arg-max, the pseudo label of Eq. 5;
* :func:`class_balance_loss` — ``L_div`` (Eq. 6): ``Σ_k w_k log w_k`` of the batch-mean class
  probabilities ``w``, lowest when the batch covers the classes evenly;
* :func:`bn_norm_loss` — ``R_feature`` (Eq. 7): ``Σ_l ‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂`` between the
  batch statistics at the teacher's BatchNorm inputs and their running statistics (plain, not
  squared, norms, as in Eq. 7 and DeepInversion's code).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from exmodel.synthesis.priors import entropy_balance_loss

BNStat = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def feature_cosine_discrepancy(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 − cos(teacher_i, student_i)``; features flattened per sample."""
    if teacher.shape != student.shape:
        raise ValueError(f"feature shapes differ: teacher {tuple(teacher.shape)}, student {tuple(student.shape)}")
    t, s = F.normalize(teacher.flatten(1), dim=1), F.normalize(student.flatten(1), dim=1)
    return (1 - (t * s).sum(1)).mean()


def pseudo_label_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``CE(logits, argmax(logits))``: how confidently each sample falls in some class."""
    return F.cross_entropy(logits, logits.argmax(1).detach())


def class_balance_loss(logits: torch.Tensor) -> torch.Tensor:
    """``Σ_k w_k log w_k`` with ``w = mean_batch softmax(logits)``; −log K at a perfectly even batch."""
    return entropy_balance_loss(torch.softmax(logits, dim=1))


def bn_norm_loss(stats: Sequence[BNStat]) -> torch.Tensor:
    """``Σ_l ‖μ_l − μ̂_l‖₂ + ‖var_l − v̂ar_l‖₂`` over ``(mean, var, running_mean, running_var)`` tuples."""
    if not stats:
        return torch.zeros(())
    return sum((torch.linalg.vector_norm(m - rm.to(m)) + torch.linalg.vector_norm(v - rv.to(v)))
               for m, v, rm, rv in stats)  # type: ignore[return-value]
