"""The tables of a run's ``cv_summary.json``: the metrics by fold, and the results per class.

:func:`summary_table` is the table both report.md (as Markdown) and the trainer's console
summary (:func:`format_summary_table`, as plain columns) show, so the two never disagree.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from reporting.metric_table import label_of
from reporting.metrics import scalar_metrics
from reporting.tables import Table, format_mean_std, format_number, render_text

POOLED_CV = "pooled out-of-fold"
POOLED_HOLDOUT = "validation"
TEST_COLUMN = "held-out test"


def is_cross_validation(summary: Mapping[str, Any]) -> bool:
    return summary.get("mode", "cv") == "cv"


def pooled_name(summary: Mapping[str, Any]) -> str:
    """What the pooled predictions are: every fold's validation images, or the one validation split."""
    return POOLED_CV if is_cross_validation(summary) else POOLED_HOLDOUT


def test_metrics_of(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The held-out test metrics of ``summary['test']`` (flat, or nested under ``metrics``), if any."""
    test = summary.get("test")
    if not isinstance(test, dict):
        return None
    return test["metrics"] if isinstance(test.get("metrics"), dict) else test


def summary_table(summary: Mapping[str, Any]) -> Table:
    """Each scalar metric: mean ± std over folds, each fold, the pooled predictions and the test set."""
    folds = summary["folds"]
    columns = [summary["oof"]]
    header = ["metric", "mean ± std"] + [f"fold {f['fold']}" for f in folds] + [pooled_name(summary)]
    test = test_metrics_of(summary)
    if test is not None:
        columns.append(test)
        header.append(TEST_COLUMN)
    rows = []
    # A summary without fold means (none were computed) still lists the pooled scalars.
    for key in summary["mean"] or scalar_metrics(summary["oof"]):
        label = label_of(key) + (" (monitored)" if key == summary.get("monitor") else "")
        rows.append([label, format_mean_std(summary["mean"].get(key), summary["std"].get(key))]
                    + [format_number(f["metrics"].get(key)) for f in folds]
                    + [format_number(metrics.get(key)) for metrics in columns])
    return Table.labelled(header, rows)


def per_class_table(metrics: Mapping[str, Any], class_names: Sequence[str]) -> Table:
    """Precision, recall, F1 and support of each class."""
    rows = [[name, format_number(c["precision"]), format_number(c["recall"]), format_number(c["f1"]),
             str(c["support"])]
            for name, c in zip(class_names, metrics["per_class"])]
    return Table.labelled(["class", "precision", "recall", "F1", "support"], rows)


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """The summary table as plain columns for the console and the log, with the best epochs."""
    folds = summary["folds"]
    return (render_text(summary_table(summary)) + "\n"
            f"best epochs: {', '.join(str(f['best_epoch']) for f in folds)}  "
            f"(chosen on {summary['monitor']}); wall time {summary['wall_time_s']:.0f}s")
