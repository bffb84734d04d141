"""Do two runs share their folds, and the corrected resampled t-test of their per-fold differences.

The K per-fold scores of two runs can be paired only when both runs used the same folds: the same
image files, split into the same folds (compared through their ``folds.json``). The folds share
training images, so the K differences are correlated and the plain paired t-test is far too
confident; Nadeau & Bengio (2003, "Inference for the generalization error") inflate the variance
by ``1/K + n_test/n_train``.

Only the standard library is imported at load time: the study runner reads the leaderboard (which
uses this module) before every study, and must start fast; scipy is loaded when a test is computed.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class TTest:
    """The corrected resampled t-test of per-fold differences (A - B)."""

    mean_difference: float
    t: float
    p_value: float
    dof: int


def corrected_resampled_t_test(differences: Sequence[float], n_train: float, n_test: float) -> TTest:
    """Nadeau & Bengio's t-test: t = mean(d) / sqrt((1/K + n_test/n_train) * var(d)), K - 1 degrees of freedom.

    ``differences`` are the K per-fold differences of a metric; ``n_train`` and ``n_test`` the
    (mean) numbers of training and validation images of a fold. Two-sided p-value.
    """
    from scipy import stats  # here, not at the top: see the module's docstring

    k = len(differences)
    if k < 2:
        raise ValueError("the corrected t-test needs at least two folds")
    mean, variance = statistics.fmean(differences), statistics.variance(differences)
    if variance == 0:  # every fold differs by the same amount: no spread to test against
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / math.sqrt((1 / k + n_test / n_train) * variance)
    return TTest(mean, t, float(2 * stats.t.sf(abs(t), k - 1)), k - 1)


def _fold_sets(document: Mapping[str, Any]) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
    return {f["fold"]: (frozenset(f["train"]), frozenset(f["val"])) for f in document["folds"]}


def why_not_comparable(folds_a: Any, folds_b: Any) -> str | None:
    """Why two runs' per-fold numbers cannot be paired (None when they used the same folds)."""
    try:
        sets_a, sets_b = _fold_sets(folds_a), _fold_sets(folds_b)
        test_a, test_b = frozenset(folds_a.get("test", [])), frozenset(folds_b.get("test", []))
    except (KeyError, TypeError, AttributeError):
        return "folds.json missing or unreadable"
    files_a = test_a.union(*(t | v for t, v in sets_a.values()))
    files_b = test_b.union(*(t | v for t, v in sets_b.values()))
    if files_a != files_b:
        return "different image files"
    if test_a != test_b:
        return "different held-out test sets"
    if len(sets_a) != len(sets_b):
        return f"different numbers of folds ({len(sets_a)} vs {len(sets_b)})"
    if sets_a != sets_b:
        return "different fold assignment"
    return None


def fold_sizes(folds: Mapping[str, Any]) -> tuple[float, float]:
    """Mean training and validation images per fold (the t-test's n_train and n_test)."""
    sets = list(_fold_sets(folds).values())
    return statistics.fmean(len(t) for t, _ in sets), statistics.fmean(len(v) for _, v in sets)


def paired_fold_test(values_a: Sequence[float], values_b: Sequence[float], folds_a: Any, folds_b: Any) -> TTest | str:
    """The corrected t-test of the per-fold differences A - B, or why it is not done.

    ``values_*`` are a metric at each fold's best epoch, in fold order; ``folds_*`` the runs' folds.json.
    """
    reason = why_not_comparable(folds_a, folds_b)
    if reason is not None:
        return reason
    differences = [a - b for a, b in zip(values_a, values_b)]
    if len(differences) < 2:
        return "one fold only"
    if not all(map(math.isfinite, differences)):
        return "the metric is undefined in a fold"
    n_train, n_test = fold_sizes(folds_a)
    return corrected_resampled_t_test(differences, n_train, n_test)
