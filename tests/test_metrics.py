"""Metrics and predictor evaluation, checked against hand-computed examples."""

import math

import numpy as np
import pytest
import torch

from exmodel.data.types import ImageDataset
from exmodel.evaluation import (
    AccuracyMatrix,
    accuracy,
    accuracy_matrix,
    average_accuracy,
    average_accuracy_all,
    backward_transfer,
    confusion_matrix,
    correct_counts_by_group,
    evaluate_predictor,
    forgetting,
    mean_std,
    per_class_accuracy,
    stream_accuracy,
    task_agnostic_predictions,
    task_aware_predictions,
)

# R[i, j]: accuracy on experience j after step i. Note R[1, 0] > R[0, 0] so the forgetting max
# must look past the diagonal.
R = np.array(
    [
        [0.90, 0.10, 0.00],
        [0.95, 0.80, 0.20],
        [0.50, 0.70, 0.95],
    ]
)


def test_accuracy_numpy_and_torch() -> None:
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(torch.tensor([3, 3]), torch.tensor([3, 0])) == 0.5
    with pytest.raises(ValueError, match="same length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_correct_counts_by_group() -> None:
    correct, counts = correct_counts_by_group([0, 1, 2, 3, 4], [0, 1, 0, 3, 0], [0, 0, 1, 1, 2], n_groups=4)
    assert correct.tolist() == [2, 1, 0, 0]
    assert counts.tolist() == [2, 2, 1, 0]
    with pytest.raises(ValueError, match=r"group must lie in \[0, 2\)"):
        correct_counts_by_group([0], [0], [2], n_groups=2)


def test_accuracy_matrix_divides_by_column_counts() -> None:
    m = accuracy_matrix([[9, 1], [5, 3]], [10, 4])
    np.testing.assert_allclose(m, [[0.9, 0.25], [0.5, 0.75]])
    zero = accuracy_matrix([[0, 1], [0, 2]], [0, 2])  # experience 0 has no test samples
    assert np.isnan(zero[:, 0]).all() and zero[1, 1] == 1.0


def test_accuracy_matrix_builder() -> None:
    m = AccuracyMatrix(2, [10, 4])
    assert np.isnan(m.matrix).all()
    m.record(0, 0, 9)
    m.record(1, 1, 3)
    r = m.matrix
    assert r[0, 0] == pytest.approx(0.9) and r[1, 1] == pytest.approx(0.75)
    assert np.isnan(r[0, 1]) and np.isnan(r[1, 0])
    assert m.correct[0, 0] == 9
    with pytest.raises(ValueError, match=r"n_correct 5 outside \[0, 4\]"):
        m.record(1, 1, 5)
    with pytest.raises(IndexError, match="exp 2 out of range"):
        m.record(0, 2, 0)
    with pytest.raises(ValueError, match=r"counts must have shape \(3,\)"):
        AccuracyMatrix(3, [1, 2])


def test_stream_accuracy_pools_samples() -> None:
    # 90/100 and 10/50: pooled 100/150, not the per-experience mean (0.9 + 0.2) / 2 = 0.55.
    assert stream_accuracy([90, 10], [100, 50]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least one test sample"):
        stream_accuracy([0], [0])


def test_average_accuracy_over_seen_experiences() -> None:
    assert average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)
    assert average_accuracy(R, step=1) == pytest.approx((0.95 + 0.80) / 2)
    assert average_accuracy(R, step=0) == pytest.approx(0.90)
    assert average_accuracy(R, step=-2) == pytest.approx((0.95 + 0.80) / 2)
    assert average_accuracy_all(R, step=1) == pytest.approx((0.95 + 0.80 + 0.20) / 3)
    assert average_accuracy_all(R) == pytest.approx(average_accuracy(R))
    with pytest.raises(IndexError, match="step 3 out of range"):
        average_accuracy(R, step=3)
    with pytest.raises(ValueError, match="square"):
        average_accuracy(np.zeros((2, 3)))


def test_average_accuracy_propagates_unrecorded_cells() -> None:
    m = AccuracyMatrix(2, [10, 10])
    m.record(1, 1, 5)
    assert math.isnan(average_accuracy(m.matrix))


def test_forgetting_uses_best_previous_accuracy() -> None:
    # j=0: max(0.90, 0.95) - 0.50 = 0.45; j=1: 0.80 - 0.70 = 0.10; mean 0.275.
    assert forgetting(R) == pytest.approx(0.275)
    # The final step is excluded from the max: improvement gives negative forgetting.
    assert forgetting(np.array([[0.5, 0.0], [0.7, 0.9]])) == pytest.approx(-0.2)
    assert math.isnan(forgetting(np.array([[0.8]])))


def test_backward_transfer() -> None:
    # (0.50 - 0.90 + 0.70 - 0.80) / 2
    assert backward_transfer(R) == pytest.approx(-0.25)
    assert math.isnan(backward_transfer(np.array([[0.8]])))


def test_per_class_accuracy_and_confusion_matrix() -> None:
    pred, target = [0, 1, 1, 2], [0, 0, 1, 1]
    cm = confusion_matrix(pred, target, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[1, 2] = 1
    np.testing.assert_array_equal(cm, expected)
    pca = per_class_accuracy(pred, target, 4)
    assert pca[:2].tolist() == [0.5, 0.5] and np.isnan(pca[2:]).all()
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 2\)"):
        confusion_matrix([2], [0], 2)


def test_task_aware_and_agnostic_predictions() -> None:
    logits = torch.tensor([[5.0, 1.0, 3.0, 0.0], [0.0, 2.0, 9.0, 1.0]])
    assert task_agnostic_predictions(logits).tolist() == [0, 2]
    aware = task_aware_predictions(logits, torch.tensor([1, 0]), [[0, 1], [2, 3]])
    assert aware.tolist() == [2, 1]
    # Works on probabilities with zeros too: the restricted argmax never leaves the task.
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert task_aware_predictions(probs, torch.tensor([1]), [[0, 1], [2, 3]]).item() in (2, 3)
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 2\)"):
        task_aware_predictions(logits, torch.tensor([0, 2]), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"task 1 lists classes outside \[0, 4\)"):
        task_aware_predictions(logits, torch.tensor([0, 1]), [[0, 1], [4]])


def test_mean_std_uses_sample_std() -> None:
    s = mean_std([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(math.sqrt(0.02))  # sqrt((0.1^2 + 0.1^2) / (2 - 1))
    assert s["per_seed"] == [0.5, 0.7]
    assert mean_std([0.3])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def _dataset(pixels: list[int], labels: list[int]) -> ImageDataset:
    images = torch.tensor(pixels, dtype=torch.uint8).view(-1, 1, 1, 1)
    return ImageDataset(images, torch.tensor(labels), tuple("abcd"), name="toy")


def _score(x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Class k scores -(3x - k)^2: pixel 0 -> class 0, 255 -> class 3, 170 -> class 2."""
    x = x01.view(-1, 1) * 3
    return -((x - torch.arange(4.0)) ** 2)


def test_evaluate_predictor_task_agnostic_and_aware() -> None:
    calls: list[tuple[int, list[int], float]] = []

    def predict(x01: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        calls.append((x01.shape[0], task_ids.tolist(), float(x01.max())))
        return _score(x01, task_ids)

    exp0 = _dataset([0, 255, 170], [0, 1, 1])  # task 0, classes {0, 1}
    exp1 = _dataset([0, 255], [2, 3])  # task 1, classes {2, 3}
    res = evaluate_predictor(predict, [(exp0, 0), (exp1, 1)], [[0, 1], [2, 3]], num_classes=4, batch_size=2)
    # Batches of 2 run across the test sets, each sample with its own task id; inputs scaled to [0, 1].
    assert [c[0] for c in calls] == [2, 2, 1]
    assert [c[1] for c in calls] == [[0, 0], [0, 1], [1]]
    assert max(c[2] for c in calls) == 1.0
    e0, e1 = res.experiences
    assert e0.pred_agnostic.tolist() == [0, 3, 2] and e0.n_correct_agnostic == 1
    assert e0.pred_aware.tolist() == [0, 1, 1] and e0.n_correct_aware == 3
    assert e1.pred_agnostic.tolist() == [0, 3] and e1.n_correct_agnostic == 1
    assert e1.pred_aware.tolist() == [2, 3] and e1.n_correct_aware == 2
    assert res.counts.tolist() == [3, 2]
    assert res.correct_agnostic.tolist() == [1, 1] and res.correct_aware.tolist() == [3, 2]
    assert res.targets().tolist() == [0, 1, 1, 2, 3]
    assert res.predictions(task_aware=True).tolist() == [0, 1, 1, 2, 3]
    assert stream_accuracy(res.correct_agnostic, res.counts) == pytest.approx(2 / 5)


def test_evaluate_predictor_without_task_classes_and_bad_output() -> None:
    exp = _dataset([0, 255], [0, 1])
    res = evaluate_predictor(_score, [(exp, 0)], None, num_classes=4)
    assert res.experiences[0].pred_aware.tolist() == res.experiences[0].pred_agnostic.tolist() == [0, 3]
    with pytest.raises(ValueError, match=r"predict_fn returned shape \(2, 4\), expected \(2, 5\)"):
        evaluate_predictor(_score, [(exp, 0)], None, num_classes=5)
    with pytest.raises(ValueError, match=r"labels outside \[0, 1\)"):
        evaluate_predictor(lambda x, t: torch.zeros(len(x), 1), [(exp, 0)], None, num_classes=1)
