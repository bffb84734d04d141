"""What the trainer adds to its summaries besides the metrics: intervals and the operating point.

``cv_summary.json`` gets ``oof_ci``, ``oof_per_class_ci``, ``ci_settings`` and, for two classes,
``operating_point``; ``test_metrics.json`` gets ``ci``, ``per_class_ci``, ``ci_settings`` and the
test set's sensitivity and specificity at the out-of-fold threshold (``operating_point``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from reporting.confidence import bootstrap_intervals
from reporting.operating_point import at_threshold, youden_operating_point


def interval_keys(prefix: str, y_true: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
                  groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """The CI keys for these predictions; none when ``n_resamples`` is 0 (intervals switched off)."""
    if n_resamples == 0:
        return {}
    return bootstrap_intervals(y_true, probs, n_resamples, seed, groups).document(prefix)


def pooled_statistics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], n_resamples: int,
                      seed: int, groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """CIs of the pooled out-of-fold metrics and, for two classes, the Youden operating point."""
    found = interval_keys("oof_", y_true, probs, n_resamples, seed, groups)
    point = youden_operating_point(y_true, probs, class_names)
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
