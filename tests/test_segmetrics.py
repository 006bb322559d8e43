"""mIoU against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from ps_trainer.core.segmetrics import confusion_matrix, mean_iou, pixel_accuracy


def test_confusion_rows_are_truth_and_ignore_is_skipped():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])
    conf = confusion_matrix(pred, target, 3)
    expected = np.array([[1, 1, 0],    # truth 0: one right, one called 1
                         [0, 2, 0],    # truth 1: both right
                         [0, 1, 0]])   # truth 2: called 1; the 255 pixel is not counted
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64


def test_mean_iou_hand_computed():
    conf = np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    miou, per_class = mean_iou(conf)
    # class 0: 1/(1+0+1)=0.5; class 1: 2/(2+2+0)=0.5; class 2: 0/(0+0+1)=0
    np.testing.assert_allclose(per_class, [0.5, 0.5, 0.0])
    assert miou == pytest.approx(1 / 3)
    assert pixel_accuracy(conf) == pytest.approx(3 / 5)


def test_absent_classes_are_left_out_of_the_mean():
    conf = np.zeros((4, 4), np.int64)
    conf[0, 0], conf[1, 1], conf[1, 0] = 5, 3, 1
    miou, per_class = mean_iou(conf)
    assert np.isnan(per_class[2]) and np.isnan(per_class[3])
    assert miou == pytest.approx((5 / 6 + 3 / 4) / 2)


def test_accumulating_batches_equals_one_matrix():
    rng = np.random.default_rng(0)
    preds, targets = rng.integers(0, 5, (4, 8, 8)), rng.integers(0, 5, (4, 8, 8))
    total = sum(confusion_matrix(p, t, 5) for p, t in zip(preds, targets))
    np.testing.assert_array_equal(total, confusion_matrix(preds, targets, 5))
    # one matrix over the split is not the mean of per-image mIoUs
    per_image = np.mean([mean_iou(confusion_matrix(p, t, 5))[0] for p, t in zip(preds, targets)])
    assert mean_iou(total)[0] != pytest.approx(per_image)


def test_out_of_range_ids_raise():
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.zeros(3), np.array([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4), 3)
