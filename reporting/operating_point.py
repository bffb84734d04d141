"""The operating point of a two-class model: the threshold on the positive class's probability.

The argmax of two probabilities is the threshold 0.5, which suits a clinic only by accident. The
threshold that maximises Youden's J (sensitivity + specificity - 1) is chosen on the pooled
out-of-fold predictions, and can then be applied unchanged to a held-out test set: the test
numbers at that threshold are then an honest estimate of it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_curve

POSITIVE = 1  # the second class (sorted folder names) is the positive one
RULE = "maximum of Youden's J (sensitivity + specificity - 1) on the pooled out-of-fold predictions"
INNER_RULE = ("maximum of Youden's J (sensitivity + specificity - 1) on the pooled inner validation "
              "predictions (the images that chose each fold's epoch)")


def youden_operating_point(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                           class_names: Sequence[str], rule: str = RULE) -> dict[str, Any] | None:
    """Threshold, sensitivity and specificity at the best Youden's J; None unless two classes are both present."""
    y_true = np.asarray(y_true)
    if len(class_names) != 2 or len(np.unique(y_true)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(y_true == POSITIVE, np.asarray(probs)[:, POSITIVE])
    youden = np.where(np.isfinite(thresholds), tpr - fpr, -np.inf)  # roc_curve's first threshold is +inf
    best = int(np.argmax(youden))
    return {"positive_class": class_names[POSITIVE], "rule": rule, "threshold": float(thresholds[best]),
            "sensitivity": float(tpr[best]), "specificity": float(1 - fpr[best]), "youden_j": float(youden[best])}


def at_threshold(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Sensitivity and specificity when the positive class is called at probability >= ``threshold``."""
    y_true = np.asarray(y_true) == POSITIVE
    called = np.asarray(probs)[:, POSITIVE] >= threshold
    return {"threshold": threshold,
            "sensitivity": float(called[y_true].mean()) if y_true.any() else None,
            "specificity": float((~called[~y_true]).mean()) if (~y_true).any() else None}
