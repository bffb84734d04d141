"""The two-class threshold at the best Youden's J, and the numbers at a given threshold."""
from __future__ import annotations

import numpy as np

from reporting.operating_point import at_threshold, youden_operating_point


def as_probs(positive: list[float]) -> np.ndarray:
    p = np.asarray(positive)
    return np.stack([1 - p, p], axis=1)


def test_youden_picks_the_threshold_that_separates_the_classes():
    # Every positive is above 0.3 and every negative below it: 0.5 would miss two positives.
    labels = [0, 0, 0, 1, 1, 1, 1]
    probs = as_probs([0.05, 0.2, 0.25, 0.35, 0.4, 0.7, 0.9])
    point = youden_operating_point(labels, probs, ["healthy", "loose"])
    assert point["positive_class"] == "loose" and point["threshold"] == 0.35
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0 and point["youden_j"] == 1.0
    assert at_threshold(labels, probs, 0.5) == {"threshold": 0.5, "sensitivity": 0.5, "specificity": 1.0}


def test_no_operating_point_without_two_classes_present():
    assert youden_operating_point([1, 1], as_probs([0.2, 0.8]), ["a", "b"]) is None
    assert youden_operating_point([0, 1], np.eye(3)[:2], ["a", "b", "c"]) is None
    assert at_threshold([1, 1], as_probs([0.2, 0.8]), 0.5)["specificity"] is None
