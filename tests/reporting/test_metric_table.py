"""reporting/metric_table.py is the one list of metrics: everything that names a metric reads it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reporting import leaderboard
from reporting.metric_table import (
    METRIC_NAMES,
    METRICS,
    MONITOR_METRICS,
    UnknownMetricError,
    label_of,
    metric,
)
from reporting.metrics import classification_metrics, mean_and_std, scalar_metrics
from reporting.run_summary import RunSummary
from reporting.summary import summary_table
from training.arguments import config_from_args
from training.config import ConfigError, TrainConfig
from tests.helpers import run_summary
from utils.errors import UserError

MANY_CLASSES = 7  # more than 5: top-k accuracy is written too


def predictions(n_classes: int, n: int = 70, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    probs = rng.dirichlet(np.ones(n_classes), n)
    probs[np.arange(n), y] += 0.3
    return y, probs / probs.sum(axis=1, keepdims=True)


def fold_summary(n_classes: int) -> RunSummary:
    y, probs = predictions(n_classes)
    folds = [scalar_metrics(classification_metrics(y[k::2], probs[k::2])) for k in (0, 1)]
    mean, std = mean_and_std(folds)
    return run_summary(folds=[{"fold": k + 1, "best_epoch": 1, "metrics": m} for k, m in enumerate(folds)],
                       mean=mean, std=std, oof=classification_metrics(y, probs), monitor="macro_f1")


def test_every_scalar_the_metrics_write_is_in_the_table() -> None:
    written = set(scalar_metrics(classification_metrics(*predictions(MANY_CLASSES))))
    assert written == set(METRIC_NAMES)


def test_monitor_choices_are_table_metrics_where_higher_is_better() -> None:
    monitor = next(f for f in dataclasses.fields(TrainConfig) if f.name == "monitor")
    assert monitor.metadata["choices"] == MONITOR_METRICS
    assert all(metric(name).higher_is_better for name in MONITOR_METRICS)
    with pytest.raises(ConfigError, match="did you mean 'macro_f1'"):
        config_from_args(["--data-dir", "d", "--monitor", "macro_f"])
    with pytest.raises(ConfigError, match="--monitor"):  # in the table, but not a checkpoint criterion
        config_from_args(["--data-dir", "d", "--monitor", "ece"])


def test_leaderboard_ranks_and_titles_table_metrics() -> None:
    assert set(leaderboard.LEADERBOARD_METRICS) <= set(METRIC_NAMES)
    header = leaderboard.leaderboard_table([], "roc_auc").header
    titles = [metric(name).short_label for name in leaderboard.LEADERBOARD_METRICS]
    assert [h.removesuffix(" ▼") for h in header[4:4 + len(titles)]] == titles
    assert header[4 + leaderboard.LEADERBOARD_METRICS.index("roc_auc")] == "AUC ▼"


def test_report_rows_are_labelled_from_the_table() -> None:
    summary = fold_summary(MANY_CLASSES)
    labels = [row[0] for row in summary_table(summary).rows]
    expected = [label_of(key) + (" (monitored)" if key == "macro_f1" else "") for key in summary.mean]
    assert labels == expected
    assert set(summary.mean) == set(METRIC_NAMES)
    assert "expected calibration error (lower is better)" in labels  # the direction is said


def test_unknown_names() -> None:
    assert label_of("sensitivity_at_90") == "sensitivity_at_90"  # shown as it is
    with pytest.raises(UnknownMetricError, match="did you mean 'balanced_accuracy'") as caught:
        metric("balanced_acuracy")
    assert isinstance(caught.value, UserError)
    with pytest.raises(UnknownMetricError, match="unknown leaderboard metric 'ece'"):
        leaderboard.ranked_metric("ece")


def test_best_follows_the_direction() -> None:
    values = [0.2, 0.05, 0.3, 0.05]
    assert metric("ece").best_of(values) == 1  # lowest, the first of a tie
    assert metric("balanced_accuracy").best_of(values) == 2
    assert {m.name for m in METRICS if not m.higher_is_better} == {"ece"}
