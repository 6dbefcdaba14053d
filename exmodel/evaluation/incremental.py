"""Class-incremental metrics, from the raw correct counts behind the accuracy matrix.

``correct[i, j]`` is the number of test samples of task ``j`` classified right after training on task
``i`` (with one head over every class, no task label); ``counts[j]`` is task ``j``'s test-set size.

* **accuracy after task i**: accuracy on the test data of every class seen so far, pooled —
  ``sum_{j <= i} correct[i, j] / sum_{j <= i} counts[j]`` (what iCaRL's and SKD's curves plot);
* **average incremental accuracy** (Rebuffi et al. 2017): the mean of those over the tasks, the base
  task included (the number of SKD's Table III and M²KD's tables);
* **final accuracy**: accuracy after the last task on all classes;
* **old / new accuracy** after the last task: on the earlier tasks' classes, and on the last task's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["accuracy_after_each_task", "average_incremental_accuracy", "old_new_accuracy"]


def _checked(correct: Any, counts: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(correct, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or n.shape != (c.shape[0],) or not len(n):
        raise ValueError(f"expected correct (T, T) and counts (T,), got {c.shape} and {n.shape}")
    return c, n


def accuracy_after_each_task(correct: Any, counts: Any) -> np.ndarray:
    """``a[i]``: pooled accuracy after task ``i`` on the tasks seen so far (``0..i``), shape ``(T,)``."""
    c, n = _checked(correct, counts)
    seen_n = np.cumsum(n)
    seen_c = np.array([c[i, : i + 1].sum() for i in range(len(n))])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(seen_n > 0, seen_c / np.where(seen_n > 0, seen_n, 1), np.nan)


def average_incremental_accuracy(correct: Any, counts: Any) -> float:
    """The mean of :func:`accuracy_after_each_task` over all tasks, the first (base) one included."""
    return float(accuracy_after_each_task(correct, counts).mean())


def old_new_accuracy(correct: Any, counts: Any) -> tuple[float, float]:
    """Accuracy after the last task on the earlier tasks' classes and on the last task's classes
    (``old`` is NaN for a single task)."""
    c, n = _checked(correct, counts)
    last = c[-1]
    old = last[:-1].sum() / n[:-1].sum() if len(n) > 1 and n[:-1].sum() > 0 else float("nan")
    new = last[-1] / n[-1] if n[-1] > 0 else float("nan")
    return float(old), float(new)
