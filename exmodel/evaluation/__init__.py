"""Evaluation: continual-learning metrics, predictor evaluation and cost meters."""

from exmodel.evaluation.costs import PeakMemory, Stopwatch, count_macs, state_bytes
from exmodel.evaluation.metrics import (
    AccuracyMatrix,
    accuracy,
    accuracy_matrix,
    average_accuracy,
    average_accuracy_all,
    backward_transfer,
    confusion_matrix,
    correct_counts_by_group,
    forgetting,
    mean_std,
    per_class_accuracy,
    stream_accuracy,
    task_agnostic_predictions,
    task_aware_predictions,
)
from exmodel.evaluation.incremental import accuracy_after_each_task, average_incremental_accuracy, old_new_accuracy
from exmodel.evaluation.predict import EvalResult, ExperienceResult, evaluate_predictor

__all__ = [
    "AccuracyMatrix",
    "EvalResult",
    "ExperienceResult",
    "PeakMemory",
    "Stopwatch",
    "accuracy",
    "accuracy_after_each_task",
    "accuracy_matrix",
    "average_accuracy",
    "average_accuracy_all",
    "average_incremental_accuracy",
    "backward_transfer",
    "confusion_matrix",
    "correct_counts_by_group",
    "count_macs",
    "evaluate_predictor",
    "forgetting",
    "mean_std",
    "old_new_accuracy",
    "per_class_accuracy",
    "state_bytes",
    "stream_accuracy",
    "task_agnostic_predictions",
    "task_aware_predictions",
]
