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
    label_zh: str  # the label of report.zh.md and leaderboard.zh.md
    short_label_zh: str
    higher_is_better: bool = True
    # In every summary and a fair single-number comparison: the checkpoint may be chosen on it
    # (--monitor) and the leaderboard ranks on it. ECE is not (a perfectly calibrated model may
    # be useless), nor top-k accuracy (only written for more than 5 classes).
    headline: bool = True

    @property
    def full_label(self) -> str:
        """The label, saying so when lower is better (a reader assumes higher)."""
        return self.full_label_in("en")

    def label_in(self, lang: str) -> str:
        return self.label_zh if lang == "zh" else self.label

    def short_label_in(self, lang: str) -> str:
        return self.short_label_zh if lang == "zh" else self.short_label

    def full_label_in(self, lang: str) -> str:
        """:meth:`label_in`, saying so when lower is better."""
        if self.higher_is_better:
            return self.label_in(lang)
        return f"{self.label_zh}（越低越好）" if lang == "zh" else f"{self.label} (lower is better)"

    def best_of(self, values: list[float]) -> int:
        """Index of the best of ``values`` in this metric's direction (the first on ties)."""
        best = max if self.higher_is_better else min
        return values.index(best(values))


METRICS = (
    Metric("accuracy", "accuracy", "accuracy", "准确率", "准确率"),
    Metric("balanced_accuracy", "balanced accuracy", "balanced acc.", "平衡准确率", "平衡准确率"),
    Metric("macro_f1", "macro F1", "macro-F1", "宏平均 F1", "宏 F1"),
    Metric("roc_auc", "macro ROC-AUC (one-vs-rest)", "AUC", "宏平均 ROC-AUC（一对其余）", "AUC"),
    Metric("ece", "expected calibration error", "ECE", "期望校准误差", "ECE", higher_is_better=False, headline=False),
    Metric(f"top{TOP_K}_accuracy", f"top-{TOP_K} accuracy", f"top-{TOP_K} acc.", f"前 {TOP_K} 准确率",
           f"前 {TOP_K} 准确率", headline=False),
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


def label_of(name: str, lang: str = "en") -> str:
    """The human label of a summary key in ``lang``; a key the table lacks is shown as it is."""
    row = _BY_NAME.get(name)
    return row.full_label_in(lang) if row else name
