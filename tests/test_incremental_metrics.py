"""Class-incremental metrics against hand computations."""

import math

import numpy as np
import pytest

from exmodel.evaluation import accuracy_after_each_task, average_incremental_accuracy, old_new_accuracy

NAN = float("nan")
# 3 tasks with 10, 20 and 10 test samples; after task i, correct counts on tasks 0..2
CORRECT = [[9, 0, 0], [5, 18, 0], [4, 10, 10]]
COUNTS = [10, 20, 10]


def test_accuracy_after_each_task_pools_the_classes_seen_so_far():
    # 9/10; (5 + 18)/30; (4 + 10 + 10)/40 — pooled, not the mean of per-task accuracies
    np.testing.assert_allclose(accuracy_after_each_task(CORRECT, COUNTS), [0.9, 23 / 30, 24 / 40])


def test_average_incremental_accuracy_includes_the_base_task():
    assert average_incremental_accuracy(CORRECT, COUNTS) == pytest.approx((0.9 + 23 / 30 + 0.6) / 3)


def test_old_and_new_accuracy_of_the_last_model():
    assert old_new_accuracy(CORRECT, COUNTS) == pytest.approx((14 / 30, 1.0))
    old, new = old_new_accuracy([[3]], [4])
    assert math.isnan(old) and new == 0.75


def test_unrecorded_future_cells_do_not_matter_and_bad_shapes_fail():
    with_nan = [[9, NAN, NAN], [5, 18, NAN], [4, 10, 10]]
    np.testing.assert_allclose(accuracy_after_each_task(with_nan, COUNTS), [0.9, 23 / 30, 0.6])
    with pytest.raises(ValueError, match="expected correct"):
        accuracy_after_each_task([[1, 2]], [3])
