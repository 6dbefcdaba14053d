"""Continual-learning metrics as pure functions.

A run over a stream of ``T`` experiences evaluates the model after every training step ``i``
(0-based) on the test split of every experience ``j``; the result is the accuracy matrix
``R[i, j]``. Everything reported by exmodel derives from that matrix, from the per-experience
correct/total counts behind it, or from raw predictions:

* **stream accuracy** (Carta et al. 2021, Eq. 2, the headline number of the ex-model paper):
  accuracy of the *final* model over all test samples of the stream pooled together, i.e. weighted
  by test-set size -- ``sum_j correct[j] / sum_j counts[j]``;
* **average accuracy** after step ``i``: ``mean_{j <= i} R[i, j]`` (experiences seen so far);
* **forgetting** (Chaudhry et al. 2018): ``mean_{j < T-1} (max_{i in [j, T-2]} R[i, j] - R[T-1, j])``;
* **backward transfer** (Lopez-Paz & Ranzato 2017): ``mean_{j < T-1} (R[T-1, j] - R[j, j])``.

Inputs may be numpy arrays, torch tensors or sequences; results are Python floats or numpy
arrays. Unrecorded cells of ``R`` are NaN and propagate into any metric that needs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "AccuracyMatrix",
    "accuracy",
    "accuracy_matrix",
    "average_accuracy",
    "average_accuracy_all",
    "backward_transfer",
    "confusion_matrix",
    "correct_counts_by_group",
    "forgetting",
    "mean_std",
    "per_class_accuracy",
    "stream_accuracy",
    "task_agnostic_predictions",
    "task_aware_predictions",
]


def _np(x: Any, dtype: Any = None) -> np.ndarray:
    """Convert a tensor / array / sequence to a numpy array (tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _labels(x: Any, name: str) -> np.ndarray:
    arr = _np(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same length, got {p.shape[0]} and {t.shape[0]}")
    return p, t


def _check_range(x: np.ndarray, n: int, name: str) -> None:
    if x.size and (x.min() < 0 or x.max() >= n):
        raise ValueError(f"{name} must lie in [0, {n}), got values in [{x.min()}, {x.max()}]")


# --------------------------------------------------------------------------- raw predictions


def accuracy(pred: Any, target: Any) -> float:
    """Fraction of positions where ``pred == target``; raises ``ValueError`` on empty input."""
    p, t = _pair(pred, target)
    if p.size == 0:
        raise ValueError("accuracy of an empty set of predictions is undefined")
    return float((p == t).mean())


def correct_counts_by_group(pred: Any, target: Any, group: Any, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``(n_correct, n_total)`` as two int64 arrays of length ``n_groups``.

    ``group[k]`` is the group (e.g. experience index) of sample ``k``; groups without samples get
    ``(0, 0)``.
    """
    p, t = _pair(pred, target)
    g = _labels(group, "group")
    if g.shape != p.shape:
        raise ValueError(f"group must have one entry per prediction, got {g.shape[0]} for {p.shape[0]}")
    _check_range(g, n_groups, "group")
    correct = np.bincount(g, weights=(p == t).astype(np.int64), minlength=n_groups).astype(np.int64)
    counts = np.bincount(g, minlength=n_groups).astype(np.int64)
    return correct, counts


def per_class_accuracy(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """Accuracy (recall) of each true class, shape ``(num_classes,)``; NaN for classes absent from ``target``."""
    cm = confusion_matrix(pred, target, num_classes)
    support = cm.sum(axis=1)
    out = np.full(num_classes, np.nan)
    present = support > 0
    out[present] = np.diag(cm)[present] / support[present]
    return out


def confusion_matrix(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """``C[t, p]`` = number of samples of true class ``t`` predicted as ``p`` (rows = true class), int64."""
    p, t = _pair(pred, target)
    _check_range(p, num_classes, "pred")
    _check_range(t, num_classes, "target")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def task_agnostic_predictions(logits: torch.Tensor) -> torch.Tensor:
    """Class-incremental prediction: ``argmax`` over the whole label space, shape ``(B,)``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    return logits.argmax(dim=1)


def task_aware_predictions(
    logits: torch.Tensor, task_ids: torch.Tensor, task_classes: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Task-incremental prediction: ``argmax`` restricted to the classes of each sample's task.

    ``task_classes[t]`` lists the global class ids of task ``t``; every other class gets ``-inf``
    before the argmax, so the prediction is always one of the task's classes. Works for logits
    and for probabilities alike (any score where higher means more likely).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    allowed = torch.zeros(len(task_classes), num_classes, dtype=torch.bool)
    for t, classes in enumerate(task_classes):
        ids = torch.as_tensor(list(classes), dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError(f"task {t} has no classes")
        if ids.min() < 0 or ids.max() >= num_classes:
            raise ValueError(f"task {t} lists classes outside [0, {num_classes}): {list(classes)}")
        allowed[t, ids] = True
    task_ids = task_ids.to(torch.long).cpu()
    if task_ids.shape != (logits.shape[0],):
        raise ValueError(f"task_ids must have shape ({logits.shape[0]},), got {tuple(task_ids.shape)}")
    if task_ids.numel() and (task_ids.min() < 0 or task_ids.max() >= len(task_classes)):
        raise ValueError(f"task_ids must lie in [0, {len(task_classes)}), got {task_ids.unique().tolist()}")
    mask = allowed[task_ids].to(logits.device)
    return logits.masked_fill(~mask, float("-inf")).argmax(dim=1)


# --------------------------------------------------------------------------- accuracy matrix


def accuracy_matrix(correct: Any, counts: Any) -> np.ndarray:
    """``R[i, j] = correct[i, j] / counts[j]`` as float64; NaN where ``counts[j] == 0`` or ``correct`` is NaN."""
    c = _np(correct, np.float64)
    n = _np(counts, np.float64)
    if c.ndim != 2 or n.ndim != 1 or c.shape[1] != n.shape[0]:
        raise ValueError(f"expected correct (T, T) and counts (T,), got {c.shape} and {n.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n[None, :] > 0, c / np.where(n > 0, n, 1.0)[None, :], np.nan)


class AccuracyMatrix:
    """Incrementally filled accuracy matrix.

    ``m = AccuracyMatrix(T, counts)``; after step ``i`` call ``m.record(i, j, n_correct)`` for each
    evaluated experience ``j``; ``m.matrix`` is ``R`` with NaN for cells not yet recorded and
    ``m.correct`` the raw counts (NaN likewise).
    """

    def __init__(self, n_experiences: int, counts: Any) -> None:
        n = _np(counts)
        if n.shape != (n_experiences,):
            raise ValueError(f"counts must have shape ({n_experiences},), got {n.shape}")
        if (n < 0).any():
            raise ValueError(f"counts must be non-negative, got {n.tolist()}")
        self.n_experiences = n_experiences
        self.counts = n.astype(np.int64)
        self._correct = np.full((n_experiences, n_experiences), np.nan)

    def record(self, step: int, exp: int, n_correct: int) -> None:
        """Store the number of correct test predictions on experience ``exp`` after step ``step``."""
        for name, v in (("step", step), ("exp", exp)):
            if not 0 <= v < self.n_experiences:
                raise IndexError(f"{name} {v} out of range [0, {self.n_experiences})")
        if not 0 <= n_correct <= self.counts[exp]:
            raise ValueError(f"n_correct {n_correct} outside [0, {self.counts[exp]}] for experience {exp}")
        self._correct[step, exp] = n_correct

    @property
    def correct(self) -> np.ndarray:
        return self._correct.copy()

    @property
    def matrix(self) -> np.ndarray:
        return accuracy_matrix(self._correct, self.counts)


def _square(R: Any) -> np.ndarray:
    r = _np(R, np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square (T, T) matrix, got shape {r.shape}")
    return r


def _step_index(step: int, T: int) -> int:
    if not -T <= step < T:
        raise IndexError(f"step {step} out of range for {T} experiences")
    return step % T


def stream_accuracy(correct_final: Any, counts: Any) -> float:
    """Eq. 2 of Carta et al. 2021: ``sum_j correct_final[j] / sum_j counts[j]``.

    Pools every test sample of the stream, so larger test sets weigh more (this is *not* the mean of
    per-experience accuracies).
    """
    c = _np(correct_final, np.float64)
    n = _np(counts, np.float64)
    if c.shape != n.shape or c.ndim != 1:
        raise ValueError(f"correct_final and counts must be 1-D of equal length, got {c.shape} and {n.shape}")
    total = n.sum()
    if total <= 0:
        raise ValueError("stream accuracy needs at least one test sample")
    return float(c.sum() / total)


def average_accuracy(R: Any, step: int = -1) -> float:
    """Mean accuracy over the experiences seen up to ``step``: ``mean_{j <= step} R[step, j]``.

    ``step=-1`` (default) is the final step, where this is the unweighted mean over all
    experiences. Negative steps count from the end as in Python indexing.
    """
    r = _square(R)
    i = _step_index(step, r.shape[0])
    return float(r[i, : i + 1].mean())


def average_accuracy_all(R: Any, step: int = -1) -> float:
    """Mean accuracy over *all* experiences (seen or not) after ``step``: ``mean_j R[step, j]``."""
    r = _square(R)
    return float(r[_step_index(step, r.shape[0])].mean())


def forgetting(R: Any) -> float:
    """Average forgetting (Chaudhry et al. 2018) of the final model.

    ``mean_{j < T-1} (max_{i in [j, T-2]} R[i, j] - R[T-1, j])``: how far each earlier experience
    dropped from its best accuracy before the last step. NaN when ``T == 1`` (nothing to forget).
    """
    r = _square(R)
    T = r.shape[0]
    if T == 1:
        return math.nan
    drops = [r[j : T - 1, j].max() - r[T - 1, j] for j in range(T - 1)]
    return float(np.mean(drops))


def backward_transfer(R: Any) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017): ``mean_{j < T-1} (R[T-1, j] - R[j, j])``.

    Negative values mean forgetting. NaN when ``T == 1``.
    """
    r = _square(R)
    T = r.shape[0]
    if T == 1:
        return math.nan
    return float(np.mean([r[T - 1, j] - r[j, j] for j in range(T - 1)]))


# --------------------------------------------------------------------------- across runs


def mean_std(values: Sequence[float | None] | np.ndarray, *, skip_missing: bool = False) -> dict[str, Any]:
    """Summary over independent runs (seeds): ``{"mean", "std", "per_seed"}``.

    ``std`` is the *sample* standard deviation (``ddof=1``), the usual estimate when reporting
    mean ± std over a handful of runs as the paper does (5 streams of experts); it is 0.0 for a
    single run. With ``skip_missing``, ``None`` and NaN values (seeds a merged run lacks) are left
    out of mean and std but kept in ``per_seed``; mean and std are ``None`` if nothing is left. The
    one implementation of mean ± std in exmodel: tables, merged reports and plots all use it.
    """
    if skip_missing:
        per_seed = list(values)
        usable = [float(v) for v in per_seed if v is not None and not math.isnan(float(v))]
        if not usable:
            return {"mean": None, "std": None, "per_seed": per_seed}
        return {**mean_std(usable), "per_seed": per_seed}
    v = _np(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "per_seed": [float(x) for x in v]}