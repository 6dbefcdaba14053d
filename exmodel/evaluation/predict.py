"""Evaluate any predictor on the test splits of a stream.

A predictor is a plain function ``predict_fn(x01, task_ids) -> scores``: ``x01`` is a float batch
``(B, C, H, W)`` in [0, 1] (each model applies its own normalization), ``task_ids`` a LongTensor
``(B,)`` with the experience each sample comes from, and ``scores`` are logits or probabilities over
the *global* label space ``(B, num_classes)`` where higher means more likely. This covers a single
continual model, the ensembles used as baselines (which may use the task id) and experts alike.

Every experience is scored two ways: task-agnostic (argmax over all classes, class-incremental) and
task-aware (argmax restricted to the classes of the sample's task, task-incremental). The caller is
responsible for putting models in eval mode; this function only disables autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from exmodel.data.types import ImageDataset
from exmodel.evaluation.metrics import task_agnostic_predictions, task_aware_predictions

PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ExperienceResult:
    """Scores of one experience's test split."""

    task_id: int
    n: int
    n_correct_agnostic: int
    n_correct_aware: int
    targets: np.ndarray  # int64 (n,)
    pred_agnostic: np.ndarray  # int64 (n,)
    pred_aware: np.ndarray  # int64 (n,)


@dataclass
class EvalResult:
    """Per-experience results, in the order of ``test_sets``."""

    experiences: list[ExperienceResult]

    @property
    def counts(self) -> np.ndarray:
        return np.array([e.n for e in self.experiences], dtype=np.int64)

    @property
    def correct_agnostic(self) -> np.ndarray:
        return np.array([e.n_correct_agnostic for e in self.experiences], dtype=np.int64)

    @property
    def correct_aware(self) -> np.ndarray:
        return np.array([e.n_correct_aware for e in self.experiences], dtype=np.int64)

    def targets(self) -> np.ndarray:
        """All targets of the stream concatenated (for the confusion matrix)."""
        return np.concatenate([e.targets for e in self.experiences]) if self.experiences else np.zeros(0, np.int64)

    def predictions(self, task_aware: bool = False) -> np.ndarray:
        """All predictions concatenated, aligned with :meth:`targets`."""
        parts = [e.pred_aware if task_aware else e.pred_agnostic for e in self.experiences]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _regroup(sizes: Sequence[int], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Sets of ``sizes`` samples, read in order, packed into batches of at most ``batch_size``: each
    batch a list of ``(set, lo, hi)`` spans, a set cut where a batch fills up."""
    batches: list[list[tuple[int, int, int]]] = [[]]
    room = batch_size
    for i, size in enumerate(sizes):
        lo, hi = 0, size
        while lo < hi:
            if room == 0:
                batches.append([])
                room = batch_size
            take = min(room, hi - lo)
            batches[-1].append((i, lo, lo + take))
            lo += take
            room -= take
    return [b for b in batches if b]


def evaluate_predictor(
    predict_fn: PredictFn,
    test_sets: Sequence[tuple[ImageDataset, int]],
    task_classes: Sequence[Sequence[int]] | None,
    num_classes: int,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Run ``predict_fn`` over every ``(test_set, task_id)`` in batches and score its predictions.

    ``task_classes[t]`` lists the global classes of task ``t`` (used for task-aware predictions);
    ``None`` means tasks share the whole label space (e.g. New Instances), so task-aware equals
    task-agnostic.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    for dataset, _ in test_sets:
        labels = dataset.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"test set '{dataset.name}' has labels outside [0, {num_classes})")
    # Batches run across test sets (small shards would otherwise cost one call each); every sample
    # carries its own task id. A set's predictions are then taken back out in order.
    agnostic: list[list[torch.Tensor]] = [[] for _ in test_sets]
    aware: list[list[torch.Tensor]] = [[] for _ in test_sets]
    with torch.no_grad():
        for span in _regroup([len(ds) for ds, _ in test_sets], batch_size):
            x = torch.cat([test_sets[i][0].float_images(slice(lo, hi)) for i, lo, hi in span]).to(device)
            tids = torch.cat([torch.full((hi - lo,), int(test_sets[i][1]), dtype=torch.long) for i, lo, hi in span])
            tids = tids.to(device)
            scores = predict_fn(x, tids)
            if scores.shape != (x.shape[0], num_classes):
                raise ValueError(
                    f"predict_fn returned shape {tuple(scores.shape)}, expected ({x.shape[0]}, {num_classes})"
                )
            p_ag = task_agnostic_predictions(scores).cpu()
            p_aw = p_ag if task_classes is None else task_aware_predictions(scores, tids, task_classes).cpu()
            at = 0
            for i, lo, hi in span:
                agnostic[i].append(p_ag[at:at + hi - lo])
                aware[i].append(p_aw[at:at + hi - lo])
                at += hi - lo
    results: list[ExperienceResult] = []
    for i, (dataset, task_id) in enumerate(test_sets):
        p_ag = torch.cat(agnostic[i]).numpy() if agnostic[i] else np.zeros(0, np.int64)
        p_aw = torch.cat(aware[i]).numpy() if aware[i] else np.zeros(0, np.int64)
        y = dataset.labels.to(torch.long).numpy()
        results.append(
            ExperienceResult(
                task_id=int(task_id),
                n=len(y),
                n_correct_agnostic=int((p_ag == y).sum()),
                n_correct_aware=int((p_aw == y).sum()),
                targets=y,
                pred_agnostic=p_ag.astype(np.int64),
                pred_aware=p_aw.astype(np.int64),
            )
        )
    return EvalResult(results)
