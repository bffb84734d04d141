"""95% bootstrap confidence intervals of the pooled and held-out metrics (issue 12, docs/design.md §10).

``scipy.stats.bootstrap`` draws the resamples and builds the intervals (BCa, falling back to the
percentile interval for a metric whose BCa interval is undefined, e.g. a metric that is the same
in every resample). What is resampled are *units*: images, or patients when a per-image group
array is given, so that all images of a patient enter or leave a resample together.

Speed: the test suite runs many tiny trainings and a real run may pool thousands of images, so
the statistic is vectorised. A resample is turned into a weight per image (how many times its
unit was drawn) and every metric is computed for a whole batch of resamples at once from those
weights (:func:`weighted_metrics`); with weights of 1 the values equal
:func:`reporting.metrics.classification_metrics` (a test checks it), so the interval is around
the very number the summary reports.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from reporting.metric_table import TOP_K
from reporting.metrics import ECE_BINS

CONFIDENCE_LEVEL = 0.95
RESAMPLES_PER_BATCH = 200  # bounds memory: a batch holds (batch, images) weights
PER_CLASS_CI_METRICS = ("sensitivity", "specificity")


@dataclass(frozen=True)
class Intervals:
    """CIs of the scalar metrics (``metric → [low, high]``) and, per class, of sensitivity and specificity."""

    scalar: dict[str, list[float | None]]
    per_class: list[dict[str, list[float | None]]]
    settings: dict[str, Any] = field(default_factory=dict)

    def document(self, prefix: str) -> dict[str, Any]:
        """The keys of a summary file: ``{prefix}ci``, ``{prefix}per_class_ci`` and ``ci_settings``."""
        return {f"{prefix}ci": self.scalar, f"{prefix}per_class_ci": self.per_class, "ci_settings": self.settings}


@dataclass(frozen=True)
class BootstrapSettings:
    """How the intervals were made: written next to them, so a reader knows what they mean."""

    n_resamples: int
    seed: int
    method: str = "BCa"
    confidence_level: float = CONFIDENCE_LEVEL
    resampled_unit: str = "image"
    percentile_fallback: tuple[str, ...] = ()


@dataclass(frozen=True)
class BootstrapBounds:
    """Lower and upper bounds of K statistics, and which came from the percentile fallback."""

    low: np.ndarray
    high: np.ndarray
    percentile: np.ndarray

    def fallback_names(self, names: Sequence[str], rows: Sequence[list[float | None]]) -> tuple[str, ...]:
        """The first ``len(names)`` statistics that fell back to a (defined) percentile interval."""
        return tuple(n for n, fell, row in zip(names, self.percentile, rows) if fell and row[0] is not None)


# ---------------------------------------------------------------------------------------------
# Metrics of many weighted resamples at once
# ---------------------------------------------------------------------------------------------
def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                     where=denominator > 0)


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC of each weight row (Mann-Whitney: ties count one half); NaN if one-sided."""
    order = np.argsort(scores, kind="stable")
    _, tie_start = np.unique(scores[order], return_index=True)
    w = weights[:, order]
    pos_w = np.add.reduceat(w * positive[order], tie_start, axis=1)  # per distinct score
    neg_w = np.add.reduceat(w * ~positive[order], tie_start, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    pairs = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(w), np.nan), where=pairs > 0)


def weighted_macro_auc(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro ROC-AUC of each weight row, as :func:`reporting.metrics.macro_roc_auc`: class 1's AUC for two
    classes, otherwise the mean over the classes that have positives and negatives in the resample."""
    if probs.shape[1] == 2:
        return _weighted_auc(y_true == 1, probs[:, 1], weights)
    per_class = np.stack([_weighted_auc(y_true == k, probs[:, k], weights) for k in range(probs.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no class is defined: NaN
        return np.nanmean(per_class, axis=0)


def weighted_confusion(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, C, C) confusion matrices (rows: true class, columns: predicted) of each row of (R, N) ``weights``."""
    n_classes = probs.shape[1]
    cells = np.eye(n_classes * n_classes)[y_true * n_classes + probs.argmax(axis=1)]  # (N, C*C) one-hot
    return (weights @ cells).reshape(len(weights), n_classes, n_classes)


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 (shape (R,)) and per-class recall and specificity (shape
    (R, C)) of (R, C, C) weighted confusion matrices."""
    total = confusion.sum(axis=(1, 2))
    hits = np.einsum("rkk->rk", confusion)
    actual, called = confusion.sum(axis=2), confusion.sum(axis=1)
    recall = _safe_divide(hits, actual)
    present = actual > 0  # balanced accuracy averages over the classes present (scikit-learn)
    return {
        "accuracy": hits.sum(axis=1) / total,
        "balanced_accuracy": (recall * present).sum(axis=1) / present.sum(axis=1),
        "macro_f1": _safe_divide(2 * hits, actual + called).mean(axis=1),
        "recall": recall,
        "specificity": _safe_divide(total[:, None] - actual - called + hits, total[:, None] - actual),
    }


CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # what the confusion matrix alone gives


def weighted_metrics(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The scalar metrics (and per-class sensitivity, specificity) of each row of ``weights``.

    ``weights`` has shape (R, N): how often each of the N images counts in each of R resamples.
    Scalars have shape (R,); ``sensitivity`` and ``specificity`` have shape (C, R).
    """
    n_classes = probs.shape[1]
    predicted = probs.argmax(axis=1)
    confusion = weighted_confusion(y_true, probs, weights)
    total = confusion.sum(axis=(1, 2))
    scores = confusion_scores(confusion)
    confidence = probs.max(axis=1)
    bins = np.clip(np.digitize(confidence, np.linspace(0, 1, ECE_BINS + 1)[1:-1], right=True), 0, ECE_BINS - 1)
    in_bin = np.eye(ECE_BINS)[bins]  # (N, bins)
    gap = weights @ (in_bin * ((predicted == y_true) - confidence)[:, None])
    metrics = {
        **{name: scores[name] for name in CONFUSION_METRICS},
        "roc_auc": weighted_macro_auc(y_true, probs, weights),
        "ece": np.abs(gap).sum(axis=1) / total,
        "sensitivity": scores["recall"].T,
        "specificity": scores["specificity"].T,
    }
    if n_classes > 5:
        in_top = (np.argsort(-probs, axis=1)[:, :TOP_K] == y_true[:, None]).any(axis=1)
        metrics[f"top{TOP_K}_accuracy"] = weights @ in_top / total
    return metrics


def weighted_metric(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray, name: str) -> np.ndarray:
    """``weighted_metrics(...)[name]``, computing that metric only (BBC-CV scores many runs many times)."""
    if name in CONFUSION_METRICS:
        return confusion_scores(weighted_confusion(y_true, probs, weights))[name]
    if name == "roc_auc":
        return weighted_macro_auc(y_true, probs, weights)
    return weighted_metrics(y_true, probs, weights)[name]


# ---------------------------------------------------------------------------------------------
# The bootstrap
# ---------------------------------------------------------------------------------------------
def _counts(drawn: np.ndarray, n_units: int) -> np.ndarray:
    """(R, draws) unit numbers → (R, n_units) how often each unit was drawn, in one bincount."""
    rows = drawn.reshape(-1, drawn.shape[-1])
    offsets = np.arange(len(rows))[:, None] * n_units
    return np.bincount((rows + offsets).ravel(), minlength=len(rows) * n_units).reshape(len(rows), n_units)


def bootstrap_weighted(statistic: Callable[[np.ndarray], np.ndarray], unit_of: np.ndarray, n_resamples: int,
                       seed: int, confidence_level: float = CONFIDENCE_LEVEL) -> BootstrapBounds:
    """CIs of each row of ``statistic(weights)`` ((R, N) image weights → (K, R) values) by resampling units.

    ``unit_of`` gives each image's unit (0 .. U-1). BCa where defined, the percentile interval of
    the same bootstrap distribution elsewhere.
    """
    n_units = int(unit_of.max()) + 1

    def on_drawn_units(drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        weights = _counts(np.asarray(drawn), n_units)[:, unit_of].astype(np.float64)
        values = statistic(weights)
        return values.reshape(len(values), *np.shape(drawn)[:-1])

    kwargs = dict(vectorized=True, batch=RESAMPLES_PER_BATCH, confidence_level=confidence_level)
    data = (np.arange(n_units),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on a degenerate metric warns; it falls back below
        with np.errstate(all="ignore"):
            bca = stats.bootstrap(data, on_drawn_units, n_resamples=n_resamples, method="BCa",
                                  rng=np.random.default_rng(seed), **kwargs)
            percentile = stats.bootstrap(data, on_drawn_units, n_resamples=0, method="percentile",
                                         bootstrap_result=bca, **kwargs)
    ok = np.isfinite(bca.confidence_interval.low) & np.isfinite(bca.confidence_interval.high)
    low = np.where(ok, bca.confidence_interval.low, percentile.confidence_interval.low)
    high = np.where(ok, bca.confidence_interval.high, percentile.confidence_interval.high)
    # A metric undefined in some resamples (AUC of a resample without one class) makes scipy's
    # percentile NaN too: its interval is then taken over the resamples where it is defined.
    undefined = ~(np.isfinite(low) & np.isfinite(high))
    alpha = (1 - confidence_level) / 2
    if undefined.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN: undefined everywhere
            bounds = np.nanquantile(bca.bootstrap_distribution[undefined], [alpha, 1 - alpha], axis=-1)
        low[undefined], high[undefined] = bounds
    return BootstrapBounds(low, high, ~ok)


def units_of(n_images: int, groups: Sequence[Any] | None) -> np.ndarray:
    """The resampled unit of each image: itself, or its group's number."""
    if groups is None:
        return np.arange(n_images)
    if len(groups) != n_images:
        raise ValueError(f"{len(groups)} groups for {n_images} images")
    return np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]


def bootstrap_intervals(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
                        groups: Sequence[Any] | None = None,
                        confidence_level: float = CONFIDENCE_LEVEL) -> Intervals:
    """Bootstrap CIs of every scalar metric and of each class's sensitivity and specificity.

    ``groups`` (one label per image, e.g. a patient id) makes the groups the resampled unit.
    A metric undefined in the data (AUC without both classes) gets ``[None, None]``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    names = scalar_names(y_true, probs)

    def statistic(weights: np.ndarray) -> np.ndarray:
        values = weighted_metrics(y_true, probs, weights)
        return np.concatenate([np.stack([values[k] for k in names]), values["sensitivity"], values["specificity"]])

    bounds = bootstrap_weighted(statistic, units_of(len(y_true), groups), n_resamples, seed, confidence_level)
    rows = [_interval(lo, hi) for lo, hi in zip(bounds.low, bounds.high)]
    n_scalar = len(names)
    scalar = dict(zip(names, rows[:n_scalar]))
    per_class = [{"sensitivity": rows[n_scalar + k], "specificity": rows[n_scalar + n_classes + k]}
                 for k in range(n_classes)]
    settings = BootstrapSettings(n_resamples, seed, confidence_level=confidence_level,
                                 resampled_unit="image" if groups is None else "group",
                                 percentile_fallback=bounds.fallback_names(names, rows))
    return Intervals(scalar, per_class, _settings_document(settings))


def scalar_names(y_true: np.ndarray, probs: np.ndarray) -> list[str]:
    """The scalar metrics :func:`weighted_metrics` gives for these predictions, in its order."""
    return [k for k in weighted_metrics(y_true, probs, np.ones((1, len(y_true)))) if k not in PER_CLASS_CI_METRICS]


def _interval(low: float, high: float) -> list[float | None]:
    # Strict JSON: an interval that cannot be computed is null, never NaN.
    if not (np.isfinite(low) and np.isfinite(high)):
        return [None, None]
    return [float(low), float(high)]


def _settings_document(settings: BootstrapSettings) -> dict[str, Any]:
    document = asdict(settings)
    document["percentile_fallback"] = list(settings.percentile_fallback)
    return document
