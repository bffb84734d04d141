"""classification_metrics against scikit-learn and against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from reporting.metrics import (
    classification_metrics,
    expected_calibration_error,
    mean_and_std,
    scalar_metrics,
    top_k_accuracy,
)


def fixed_predictions(n: int = 80, n_classes: int = 4, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels, noisy probabilities; class 3 is never the argmax (zero-division path)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(n_classes, size=n, p=[0.5, 0.25, 0.15, 0.10][:n_classes])
    probs = rng.dirichlet(np.ones(n_classes), size=n)
    probs[np.arange(n), y] += rng.uniform(0.0, 0.8, size=n)
    probs[:, 3] *= 0.2
    return y, probs / probs.sum(axis=1, keepdims=True)


def test_matches_scikit_learn_on_fixed_predictions() -> None:
    y, probs = fixed_predictions()
    pred = probs.argmax(axis=1)
    assert 3 not in pred and 0.3 < (pred == y).mean() < 0.95  # a real mix of right and wrong
    m = classification_metrics(y, probs)

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=range(4),
                                                                         zero_division=0)
    assert [c["precision"] for c in m["per_class"]] == pytest.approx(precision)
    assert [c["recall"] for c in m["per_class"]] == pytest.approx(recall)
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f1)
    assert [c["support"] for c in m["per_class"]] == support.tolist()
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
    assert "top3_accuracy" not in m  # only reported with more than 5 classes


def test_binary_auc_uses_the_positive_class_column() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.6, 0.55, 0.8, 0.3, 0.2])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))


def test_auc_averages_the_classes_present_when_one_is_missing() -> None:
    # A validation fold without class 2: scikit-learn's multi-class call refuses; we average the others.
    y, probs = fixed_predictions(n=60, n_classes=4)
    y[y == 2] = 0
    expected = np.mean([skm.roc_auc_score(y == k, probs[:, k]) for k in (0, 1, 3)])
    assert classification_metrics(y, probs)["roc_auc"] == pytest.approx(expected)
    assert math.isnan(classification_metrics(np.zeros(3, dtype=int), np.full((3, 2), 0.5))["roc_auc"])


def test_hand_computed_three_class_example() -> None:
    # true: 0 0 0 1 1 2 ; predicted: 0 0 1 1 2 2
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # per class (precision, recall): 0 (1, 2/3), 1 (1/2, 1/2), 2 (1/2, 1)
    f1 = [2 * (1 * 2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert [c["support"] for c in m["per_class"]] == [3, 2, 1]
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_ece_on_a_hand_computed_example() -> None:
    # Confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.62 (right) fall into three of 15 bins:
    # ECE = 2/4·|0.5 − 0.9| + 1/4·|1 − 0.7| + 1/4·|1 − 0.62| = 0.2 + 0.075 + 0.095.
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.62, 0.38]])
    assert expected_calibration_error(y, probs) == pytest.approx(0.37)
    assert classification_metrics(y, probs)["ece"] == pytest.approx(0.37)
    # One bin holding everything: the gap of the means.
    assert expected_calibration_error(y, probs, n_bins=1) == pytest.approx(abs(0.75 - (0.9 + 0.9 + 0.7 + 0.62) / 4))
    # Confident and right: perfectly calibrated.
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_top_k_accuracy_on_a_hand_computed_example() -> None:
    # Six classes; the true class ranks 1st, 3rd, 4th and 2nd: top-3 accuracy 3/4, top-1 1/4.
    probs = np.array([
        [0.50, 0.20, 0.10, 0.08, 0.07, 0.05],  # true 0: rank 1
        [0.30, 0.25, 0.20, 0.12, 0.08, 0.05],  # true 2: rank 3
        [0.30, 0.25, 0.20, 0.12, 0.08, 0.05],  # true 3: rank 4
        [0.05, 0.10, 0.15, 0.20, 0.40, 0.10],  # true 3: rank 2
    ])
    y = np.array([0, 2, 3, 3])
    assert top_k_accuracy(y, probs, 3) == pytest.approx(0.75)
    assert top_k_accuracy(y, probs, 1) == pytest.approx(0.25)
    m = classification_metrics(y, probs)
    assert m["top3_accuracy"] == pytest.approx(0.75)
    assert m["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3, labels=range(6)))


def test_scalars_and_mean_std_over_folds() -> None:
    y, probs = fixed_predictions()
    m = classification_metrics(y, probs)
    assert set(scalar_metrics(m)) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece"}
    mean, std = mean_and_std([{"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": 1.0}])
    assert mean["accuracy"] == pytest.approx(0.9) and std["accuracy"] == pytest.approx(0.1)  # ddof=1


def test_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="expected N labels"):
        classification_metrics(np.array([0, 1]), np.full((3, 2), 0.5))
