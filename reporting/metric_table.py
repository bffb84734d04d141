"""The one table of scalar metrics: every report, plot, leaderboard and ``--monitor`` reads it.

A metric missing here cannot be monitored, ranked or labelled, so adding one to
:func:`reporting.metrics.classification_metrics` means adding its row here (a test checks it).
Only the standard library is imported: the run configuration and ``python -m
reporting.leaderboard --status`` read this table without loading numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.errors import UserError, suggest

TOP_K = 3  # top-k accuracy is reported when there are more than 5 classes


class UnknownMetricError(UserError):
    """A metric name the table (or the part of it asked for) does not hold."""


@dataclass(frozen=True)
class Metric:
    """A single-number metric of a set of predictions, as the summaries store it under ``name``."""

    name: str
    label: str  # report rows, plot axes
    short_label: str  # leaderboard columns, where width is scarce
    higher_is_better: bool = True
    # In every summary and a fair single-number comparison: the checkpoint may be chosen on it
    # (--monitor) and the leaderboard ranks on it. ECE is not (a perfectly calibrated model may
    # be useless), nor top-k accuracy (only written for more than 5 classes).
    headline: bool = True

    @property
    def full_label(self) -> str:
        """The label, saying so when lower is better (a reader assumes higher)."""
        return self.label if self.higher_is_better else f"{self.label} (lower is better)"

    def best_of(self, values: list[float]) -> int:
        """Index of the best of ``values`` in this metric's direction (the first on ties)."""
        best = max if self.higher_is_better else min
        return values.index(best(values))


METRICS = (
    Metric("accuracy", "accuracy", "accuracy"),
    Metric("balanced_accuracy", "balanced accuracy", "balanced acc."),
    Metric("macro_f1", "macro F1", "macro-F1"),
    Metric("roc_auc", "macro ROC-AUC (one-vs-rest)", "AUC"),
    Metric("ece", "expected calibration error", "ECE", higher_is_better=False, headline=False),
    Metric(f"top{TOP_K}_accuracy", f"top-{TOP_K} accuracy", f"top-{TOP_K} acc.", headline=False),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
HEADLINE_METRICS = tuple(m.name for m in METRICS if m.headline)
MONITOR_METRICS = HEADLINE_METRICS  # the checkpoint's --monitor choices
_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str, what: str = "metric", allowed: tuple[str, ...] = METRIC_NAMES) -> Metric:
    """The table's row for ``name``; :class:`UnknownMetricError` naming ``what`` when not ``allowed``."""
    if name not in allowed:
        raise UnknownMetricError(f"unknown {what} '{name}'{suggest(name, allowed)}; expected one of "
                                 f"{', '.join(allowed)}")
    return _BY_NAME[name]


def label_of(name: str) -> str:
    """The human label of a summary key; a key the table lacks is shown as it is."""
    row = _BY_NAME.get(name)
    return row.full_label if row else name
