"""What the trainer adds to its summaries besides the metrics: intervals and the operating point.

``cv_summary.json`` gets ``oof_ci``, ``oof_per_class_ci``, ``ci_settings`` and, for two classes,
``operating_point``; ``test_metrics.json`` gets ``ci``, ``per_class_ci``, ``ci_settings`` and the
test set's sensitivity and specificity at the out-of-fold threshold (``operating_point``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from reporting.confidence import bootstrap_intervals
from reporting.operating_point import INNER_RULE, at_threshold, youden_operating_point


def interval_keys(prefix: str, y_true: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
                  groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """The CI keys for these predictions; none when ``n_resamples`` is 0 (intervals switched off)."""
    if n_resamples == 0:
        return {}
    return bootstrap_intervals(y_true, probs, n_resamples, seed, groups).document(prefix)


def pooled_statistics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], n_resamples: int,
                      seed: int, groups: Sequence[Any] | None = None,
                      chooser: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """CIs of the pooled out-of-fold metrics and, for two classes, the Youden operating point.

    ``chooser``: labels and probabilities of other images (the folds' inner validation splits) on which
    the threshold is chosen; the out-of-fold numbers are then read at it. Without it the threshold is
    chosen on the out-of-fold predictions themselves.
    """
    found = interval_keys("oof_", y_true, probs, n_resamples, seed, groups)
    if chooser is None:
        point = youden_operating_point(y_true, probs, class_names)
    else:
        point = youden_operating_point(*chooser, class_names, INNER_RULE)
        if point is not None:
            point = {**point, **{f"inner_{key}": point[key] for key in ("sensitivity", "specificity", "youden_j")},
                     **at_threshold(y_true, probs, point["threshold"])}
            del point["youden_j"]  # the out-of-fold J at a threshold chosen elsewhere is not a maximum
    if point is not None:
        found["operating_point"] = point
    return found


def held_out_statistics(y_true: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
                        pooled: Mapping[str, Any], groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """CIs of the held-out metrics and the test numbers at the threshold the pooled predictions chose."""
    found = interval_keys("", y_true, probs, n_resamples, seed, groups)
    if "operating_point" in pooled:
        found["operating_point"] = at_threshold(y_true, probs, pooled["operating_point"]["threshold"])
    return found
