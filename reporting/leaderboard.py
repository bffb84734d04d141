"""The leaderboard of a study: one row per run folder, ranked on a cross-validated metric.

Reads each run's ``cv_summary.json`` and ``folds.json`` (docs/design.md §6) and writes
``leaderboard.csv`` and ``leaderboard.md`` into the study's output root. Each run is compared
with the top one: the mean per-fold difference of the ranked metric and the p-value of the
corrected resampled t-test (:mod:`reporting.compare`), only when both used the same folds;
otherwise the row says why not. The study runner calls it at the end; it
also runs on its own::

    python -m reporting.leaderboard checkpoints/clip_models               # every run folder there
    python -m reporting.leaderboard checkpoints/clip_models resnet18_clip_ViT-B_32 --metric roc_auc
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from reporting import metric_table
from reporting.fold_comparison import TTest, paired_fold_test, per_fold
from reporting.metric_table import HEADLINE_METRICS, Metric
from reporting.tables import Table, format_mean_std, format_number, render_markdown
from utils.errors import UserError, exit_status
from utils.io import atomic_write, write_csv
from utils.run_dir import RunDir

LEADERBOARD_METRICS = HEADLINE_METRICS  # in every summary: each finished run has them all
DEFAULT_METRIC = "balanced_accuracy"
CSV_FILE = "leaderboard.csv"
MARKDOWN_FILE = "leaderboard.md"


class LeaderboardError(UserError):
    """Bad input to the leaderboard; the message is meant for the user as is."""


@dataclass(frozen=True)
class Entry:
    """One finished run: its folder name, encoders and the mean ± std of each metric over folds."""

    run: str
    image_encoder: str
    text_encoder: str
    n_splits: int
    mean: dict[str, float]
    std: dict[str, float]
    wall_time_s: float
    per_fold: dict[str, list[float]] = field(default_factory=dict, compare=False)  # by fold number
    folds: Any = field(default=None, compare=False)  # the run's folds.json document (None: missing)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _number(value: Any) -> float:
    """A metric value as a float; NaN for null (e.g. AUC of a fold missing a class)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def parse_summary(data: Any, run: str) -> Entry | None:
    """The leaderboard entry of a ``cv_summary.json`` document; None when it is not complete.

    Complete means: every fold the run planned is there, and the mean and std of each
    leaderboard metric are numbers (the trainer writes the file once, at the very end).
    """
    if not isinstance(data, dict):
        return None
    mean, std, folds = data.get("mean"), data.get("std"), data.get("folds")
    if not (isinstance(mean, dict) and isinstance(std, dict) and isinstance(folds, list) and folds):
        return None
    n_splits = data.get("n_splits")
    if not isinstance(n_splits, int) or n_splits != len(folds):
        return None
    try:
        means = {key: _number(mean[key]) for key in LEADERBOARD_METRICS}
        stds = {key: _number(std[key]) for key in LEADERBOARD_METRICS}
        wall_time = _number(data.get("wall_time_s"))
        fold_values = {key: per_fold(data, key) for key in LEADERBOARD_METRICS}
    except (KeyError, TypeError, AttributeError):
        return None
    return Entry(run, str(data.get("image_encoder", "")), str(data.get("text_encoder", "")), n_splits,
                 means, stds, wall_time, fold_values)


def read_entry(run_dir: Path) -> Entry | None:
    """The entry of ``run_dir`` (with its folds.json), or None when it holds no complete ``cv_summary.json``."""
    data = _read_or_none(RunDir(run_dir).summary)
    entry = parse_summary(data, run_dir.name)
    return entry if entry is None else replace(entry, folds=_read_or_none(RunDir(run_dir).folds))


def _read_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError):
        return None


def find_runs(root: Path) -> list[str]:
    """Folders directly under ``root`` that a training run wrote (they hold its config.json)."""
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (RunDir(p).summary.is_file() or RunDir(p).config.is_file()))


def ranked_metric(name: str) -> Metric:
    """The table's row for a metric the leaderboard can rank on (every finished run has it)."""
    return metric_table.metric(name, "leaderboard metric", LEADERBOARD_METRICS)


def rank(entries: Sequence[Entry], metric: str) -> list[Entry]:
    """Best mean first; runs whose metric is NaN go last; ties keep name order."""
    sign = -1.0 if ranked_metric(metric).higher_is_better else 1.0

    def order(entry: Entry) -> tuple[bool, float, str]:
        value = entry.mean[metric]
        return math.isnan(value), 0.0 if math.isnan(value) else sign * value, entry.run

    return sorted(entries, key=order)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def against_top(ranked: Sequence[Entry], metric: str) -> list[TTest | str | None]:
    """Each run against the first on ``metric``: the corrected t-test, why it is not done, or None (the top)."""
    if not ranked:
        return []
    top = ranked[0]
    return [None] + [paired_fold_test(e.per_fold[metric], top.per_fold[metric], e.folds, top.folds)
                     for e in ranked[1:]]


def comparison_cells(result: TTest | str | None) -> list[str]:
    """The mean per-fold difference and the p-value cells; the reason when the runs were not compared."""
    if result is None:
        return ["—", "—"]
    if isinstance(result, str):
        return ["n/a", f"not compared: {result}"]
    return [f"{result.mean_difference:+.4f}", format_number(result.p_value)]


def leaderboard_table(ranked: Sequence[Entry], metric: str) -> Table:
    """Rank, run, encoders, mean ± std of each metric (▼ marks the one ranked on), folds, wall time,
    and the comparison with the first run."""
    columns = [ranked_metric(m) for m in LEADERBOARD_METRICS]
    header = ["rank", "run", "image encoder", "text encoder"]
    header += [m.short_label + (" ▼" if m.name == metric else "") for m in columns] + ["folds", "wall time"]
    header += ["Δ vs #1 (per fold)", "p vs #1 (corrected t)"]
    rows = [[str(i), e.run, e.image_encoder, e.text_encoder]
            + [format_mean_std(e.mean[m.name], e.std[m.name]) for m in columns]
            + [str(e.n_splits), format_duration(e.wall_time_s)] + comparison_cells(result)
            for i, (e, result) in enumerate(zip(ranked, against_top(ranked, metric)), 1)]
    return Table(header, rows, [True, False, False, False] + [True] * len(columns) + [True, True, True, False])


def format_leaderboard(ranked: Sequence[Entry], metric: str, without_results: Sequence[str] = ()) -> str:
    """The leaderboard as Markdown: ranked runs, then the runs that have no results (yet)."""
    parts = [f"Leaderboard: mean ± std over folds, best {metric} first.", "",
             render_markdown(leaderboard_table(ranked, metric)) if ranked else "(no finished runs)", "",
             f"Δ vs #1: mean over folds of (this run - run #1) in {metric}; p: corrected resampled t-test "
             "(Nadeau & Bengio 2003) of those differences, only between runs trained on the same folds."]
    if without_results:
        parts += ["", "Runs without results (failed, interrupted or not run):", ""]
        parts += [f"- {run}" for run in without_results]
    return "\n".join(parts) + "\n"


def csv_rows(ranked: Sequence[Entry], metric: str) -> tuple[list[str], list[list[Any]]]:
    header = ["rank", "run", "image_encoder", "text_encoder", "n_splits"]
    header += [f"{m}_{part}" for m in LEADERBOARD_METRICS for part in ("mean", "std")] + ["wall_time_s"]
    header += ["difference_vs_top", "p_value_vs_top", "not_compared_because"]
    rows = [[i, e.run, e.image_encoder, e.text_encoder, e.n_splits]
            + [value for m in LEADERBOARD_METRICS for value in (e.mean[m], e.std[m])] + [e.wall_time_s]
            + ([result.mean_difference, result.p_value, ""] if isinstance(result, TTest)
               else ["", "", result or ""])
            for i, (e, result) in enumerate(zip(ranked, against_top(ranked, metric)), 1)]
    return header, rows


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------
def build_leaderboard(root: Path, runs: Sequence[str] | None = None,
                      metric: str = DEFAULT_METRIC) -> tuple[list[Entry], list[str]]:
    """Ranked entries of ``runs`` (folder names under ``root``; default: every run folder there)
    and the names of those without a complete summary."""
    ranked_metric(metric)
    if not root.is_dir():
        raise LeaderboardError(f"output root not found: {root}")
    names = list(runs) if runs is not None else find_runs(root)
    entries, without_results = [], []
    for name in names:
        entry = read_entry(root / name)
        if entry is None:
            without_results.append(name)
        else:
            entries.append(entry)
    return rank(entries, metric), without_results


def write_leaderboard(root: Path, ranked: Sequence[Entry], metric: str,
                      without_results: Sequence[str] = ()) -> str:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` into ``root``; returns the Markdown."""
    text = format_leaderboard(ranked, metric, without_results)
    header, rows = csv_rows(ranked, metric)
    write_csv(root / CSV_FILE, header, rows)
    with atomic_write(root / MARKDOWN_FILE, "w") as handle:
        handle.write(text)
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reporting.leaderboard",
        description="Rank the runs of a study by their cross-validated metrics and write "
                    f"{CSV_FILE} and {MARKDOWN_FILE} into OUTPUT_ROOT.")
    parser.add_argument("output_root", metavar="OUTPUT_ROOT", help="Folder holding one folder per run.")
    parser.add_argument("runs", metavar="RUN", nargs="*",
                        help="Run folder names under OUTPUT_ROOT (default: every run folder there).")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"Metric to rank on: {', '.join(LEADERBOARD_METRICS)} "
                             f"(default: {DEFAULT_METRIC}).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.output_root)

    def leaderboard_text() -> str:
        ranked, without_results = build_leaderboard(root, args.runs or None, args.metric)
        return write_leaderboard(root, ranked, args.metric, without_results)

    return exit_status(leaderboard_text)


if __name__ == "__main__":
    sys.exit(main())
