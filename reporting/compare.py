"""Comparing two runs: per-metric differences with paired bootstrap CIs, and the corrected t-test.

Two statistics answer "is run A better than run B?":

- the **paired bootstrap** over the out-of-fold images both runs predicted: each resample draws
  images (the same ones for both runs) and takes the difference of the metric, so the CI of the
  difference accounts for both runs being scored on the same images;
- the **corrected resampled t-test** of Nadeau & Bengio (2003) on the per-fold differences. The
  folds share training images, so the K differences are correlated and the plain paired t-test is
  far too confident; the correction inflates the variance by ``1/K + n_test/n_train``. It is only
  meaningful when both runs used the same folds (same files, same fold assignment), so it is
  refused, with the reason, otherwise.

``python -m reporting.compare RUN_A RUN_B`` prints both for every metric.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reporting.confidence import bootstrap_weighted, scalar_names, weighted_metrics
from reporting.fold_comparison import TTest, paired_fold_test
from reporting.metric_table import label_of
from reporting.report import load_prediction_rows
from reporting.run_summary import RunSummary, read_summary
from reporting.tables import Table, format_interval, format_number, render_text
from utils.errors import UserError, exit_status
from utils.io import read_json
from utils.run_dir import RunDir

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 42


class CompareError(UserError):
    """Two runs that cannot be compared as asked."""


# ---------------------------------------------------------------------------------------------
# Paired bootstrap over the shared out-of-fold images
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """One metric of run A and run B on the shared images, A - B, and the paired bootstrap CI of A - B."""

    metric: str
    a: float
    b: float
    difference: float
    interval: list[float | None]


def paired_differences(y_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_resamples: int,
                       seed: int) -> list[Difference]:
    """Each scalar metric of A and B on the same images, A - B, and its 95% CI (images resampled in pairs)."""
    names = scalar_names(y_true, probs_a)

    def differences(weights: np.ndarray) -> np.ndarray:
        a, b = weighted_metrics(y_true, probs_a, weights), weighted_metrics(y_true, probs_b, weights)
        return np.stack([a[n] - b[n] for n in names])

    ones = np.ones((1, len(y_true)))
    point_a, point_b = weighted_metrics(y_true, probs_a, ones), weighted_metrics(y_true, probs_b, ones)
    bounds = bootstrap_weighted(differences, np.arange(len(y_true)), n_resamples, seed)
    found = []
    for k, name in enumerate(names):
        interval = [float(bounds.low[k]), float(bounds.high[k])]
        a, b = float(point_a[name][0]), float(point_b[name][0])
        found.append(Difference(name, a, b, a - b, interval if all(map(math.isfinite, interval)) else [None, None]))
    return found


# ---------------------------------------------------------------------------------------------
# Two run folders
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFiles:
    name: str
    summary: RunSummary
    folds: Any
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray


def read_run(path: Path) -> RunFiles:
    run = RunDir(path)
    if not run.summary.is_file():
        raise CompareError(f"{path} holds no cv_summary.json: not a finished train_clip run")
    summary = read_summary(run.summary)
    folds = read_json(run.folds, "folds file") if run.folds.is_file() else None
    paths, y_true, probs = load_prediction_rows(run.oof_predictions, summary.class_names)
    return RunFiles(path.name or str(path), summary, folds, paths, y_true, probs)


def shared_predictions(a: RunFiles, b: RunFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and both runs' probabilities on the out-of-fold images both predicted, in A's order."""
    if a.summary.class_names != b.summary.class_names:
        raise CompareError(f"{a.name} and {b.name} have different classes: "
                           f"{a.summary.class_names} vs {b.summary.class_names}")
    row_of_b = {path: i for i, path in enumerate(b.paths)}
    in_a = [i for i, path in enumerate(a.paths) if path in row_of_b]
    if not in_a:
        raise CompareError(f"{a.name} and {b.name} share no out-of-fold image")
    in_b = [row_of_b[a.paths[i]] for i in in_a]
    if not np.array_equal(a.y_true[in_a], b.y_true[in_b]):
        raise CompareError(f"{a.name} and {b.name} give the same image different true classes")
    return a.y_true[in_a], a.probs[in_a], b.probs[in_b]


def compare_runs(run_a: Path, run_b: Path, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> str:
    """The comparison as text: the table of differences and how it was made."""
    a, b = read_run(run_a), read_run(run_b)
    y_true, probs_a, probs_b = shared_predictions(a, b)
    rows = []
    for d in paired_differences(y_true, probs_a, probs_b, n_resamples, seed):
        test = paired_fold_test(a.summary.metric_by_fold(d.metric), b.summary.metric_by_fold(d.metric), a.folds,
                                b.folds)
        fold_cells = ([format_number(test.mean_difference), f"{test.t:.3f}", format_number(test.p_value)]
                      if isinstance(test, TTest) else ["n/a", "n/a", f"not done: {test}"])
        rows.append([label_of(d.metric), format_number(d.a), format_number(d.b), format_number(d.difference),
                     format_interval(d.interval)] + fold_cells)
    header = ["metric", a.name, b.name, "A - B", "95% CI", "per-fold mean A - B", "t", "p (corrected)"]
    return "\n".join([
        f"A = {run_a}, B = {run_b}: {len(y_true)} shared out-of-fold images "
        f"({len(a.paths)} in A, {len(b.paths)} in B).",
        render_text(Table.labelled(header, rows)),
        f"95% CI: paired bootstrap over the shared images, {n_resamples} resamples, seed {seed} (BCa, percentile "
        "where BCa is undefined). p: corrected resampled t-test of the per-fold differences (Nadeau & Bengio "
        "2003, variance x (1/K + n_test/n_train)), two-sided; only for runs with the same folds."])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reporting.compare",
                                     description="Compare two finished train_clip runs metric by metric.")
    parser.add_argument("run_a", metavar="RUN_A", help="First run folder (its --output-dir).")
    parser.add_argument("run_b", metavar="RUN_B", help="Second run folder.")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"Bootstrap resamples (default {DEFAULT_RESAMPLES}).")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Bootstrap seed (default {DEFAULT_SEED}).")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    return exit_status(lambda: compare_runs(Path(args.run_a), Path(args.run_b), args.resamples, args.seed) + "\n")


if __name__ == "__main__":
    sys.exit(main())
