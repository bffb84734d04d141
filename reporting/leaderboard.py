"""The leaderboard of a study: one row per run folder, ranked on a cross-validated metric.

Reads each run's ``cv_summary.json`` (DESIGN.md §6) and writes ``leaderboard.csv`` and
``leaderboard.md`` into the study's output root. ``run_train_clip.sh`` calls it at the end;
it also runs on its own::

    python -m reporting.leaderboard checkpoints/clip_models               # every run folder there
    python -m reporting.leaderboard checkpoints/clip_models resnet18_clip_ViT-B_32 --metric roc_auc
    python -m reporting.leaderboard checkpoints/clip_models --status       # complete / partial / empty

Only the standard library is imported at module level so that ``--status`` answers at once
(the driver asks it before every study); writing uses :mod:`utils.io`, which imports torch.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

SUMMARY_FILE = "cv_summary.json"
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
METRIC_TITLES = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
                 "roc_auc": "AUC"}
DEFAULT_METRIC = "balanced_accuracy"


class LeaderboardError(ValueError):
    """Bad input to the leaderboard; the message is meant for the user as is."""


@dataclass
class Entry:
    """One finished run: its folder name, encoders and the mean ± std of each metric over folds."""

    run: str
    image_encoder: str
    text_encoder: str
    n_splits: int
    mean: dict[str, float]
    std: dict[str, float]
    wall_time_s: float


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
        means = {key: _number(mean[key]) for key in METRICS}
        stds = {key: _number(std[key]) for key in METRICS}
        wall_time = _number(data.get("wall_time_s"))
    except (KeyError, TypeError):
        return None
    return Entry(run, str(data.get("image_encoder", "")), str(data.get("text_encoder", "")), n_splits,
                 means, stds, wall_time)


def read_entry(run_dir: Path) -> Entry | None:
    """The entry of ``run_dir``, or None when it holds no complete ``cv_summary.json``."""
    try:
        data = json.loads((run_dir / SUMMARY_FILE).read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError):
        return None
    return parse_summary(data, run_dir.name)


def run_status(run_dir: Path) -> str:
    """``complete`` (results to rank), ``partial`` (started, not finished) or ``empty``."""
    if read_entry(run_dir) is not None:
        return "complete"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "partial"
    return "empty"


def find_runs(root: Path) -> list[str]:
    """Folders directly under ``root`` that a training run wrote (they hold its config.json)."""
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and ((p / SUMMARY_FILE).is_file() or (p / "config.json").is_file()))


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        close = difflib.get_close_matches(metric, METRICS, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LeaderboardError(f"unknown leaderboard metric '{metric}'{hint}; expected one of "
                               f"{', '.join(METRICS)}")


def rank(entries: Sequence[Entry], metric: str) -> list[Entry]:
    """Best mean first; runs whose metric is NaN go last; ties keep name order."""
    check_metric(metric)
    return sorted(entries, key=lambda e: (math.isnan(e.mean[metric]),
                                          -e.mean[metric] if not math.isnan(e.mean[metric]) else 0.0,
                                          e.run))


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


def format_mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def display_width(text: str) -> int:
    """Terminal columns of ``text``: CJK characters take two (run names may be Chinese)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - display_width(text))
    return fill + text if right else text + fill


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A Markdown table whose columns also line up in a terminal."""
    widths = [max(display_width(cell) for cell in column) for column in zip(header, *rows)]
    widths = [max(w, 3) for w in widths]
    lines = ["| " + " | ".join(_pad(cell, w, False) for cell, w in zip(header, widths)) + " |",
             "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_pad(cell, w, r) for cell, w, r in zip(row, widths, right)) + " |")
    return "\n".join(lines)


def format_leaderboard(ranked: Sequence[Entry], metric: str, without_results: Sequence[str] = ()) -> str:
    """The leaderboard as Markdown: ranked runs, then the runs that have no results (yet)."""
    header = ["rank", "run", "image encoder", "text encoder"]
    header += [METRIC_TITLES[m] + (" ▼" if m == metric else "") for m in METRICS] + ["folds", "wall time"]
    rows = [[str(i), e.run, e.image_encoder, e.text_encoder]
            + [format_mean_std(e.mean[m], e.std[m]) for m in METRICS]
            + [str(e.n_splits), format_duration(e.wall_time_s)]
            for i, e in enumerate(ranked, 1)]
    right = [True, False, False, False] + [True] * len(METRICS) + [True, True]
    parts = [f"Leaderboard: mean ± std over folds, best {metric} first.", "",
             markdown_table(header, rows, right) if rows else "(no finished runs)"]
    if without_results:
        parts += ["", "Runs without results (failed, interrupted or not run):", ""]
        parts += [f"- {name}" for name in without_results]
    return "\n".join(parts) + "\n"


def csv_rows(ranked: Sequence[Entry]) -> tuple[list[str], list[list[Any]]]:
    header = ["rank", "run", "image_encoder", "text_encoder", "n_splits"]
    header += [f"{m}_{part}" for m in METRICS for part in ("mean", "std")] + ["wall_time_s"]
    rows = [[i, e.run, e.image_encoder, e.text_encoder, e.n_splits]
            + [value for m in METRICS for value in (e.mean[m], e.std[m])] + [e.wall_time_s]
            for i, e in enumerate(ranked, 1)]
    return header, rows


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------
def build_leaderboard(root: Path, runs: Sequence[str] | None = None,
                      metric: str = DEFAULT_METRIC) -> tuple[list[Entry], list[str]]:
    """Ranked entries of ``runs`` (folder names under ``root``; default: every run folder there)
    and the names of those without a complete summary."""
    check_metric(metric)
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
    from utils.io import atomic_write, write_csv  # imports torch: only when writing

    text = format_leaderboard(ranked, metric, without_results)
    header, rows = csv_rows(ranked)
    write_csv(root / "leaderboard.csv", header, rows)
    with atomic_write(root / "leaderboard.md", "w") as handle:
        handle.write(text)
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reporting.leaderboard",
        description="Rank the runs of a study by their cross-validated metrics and write "
                    "leaderboard.csv and leaderboard.md into OUTPUT_ROOT.")
    parser.add_argument("output_root", metavar="OUTPUT_ROOT", help="Folder holding one folder per run.")
    parser.add_argument("runs", metavar="RUN", nargs="*",
                        help="Run folder names under OUTPUT_ROOT (default: every run folder there).")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"Metric to rank on: {', '.join(METRICS)} (default: {DEFAULT_METRIC}).")
    parser.add_argument("--status", action="store_true",
                        help="Only print 'complete', 'partial' or 'empty' and the name of each run; "
                             "write nothing.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.output_root)
    try:
        check_metric(args.metric)  # also with --status: the driver checks its setting before training
        if args.status:
            for name in args.runs or (find_runs(root) if root.is_dir() else []):
                print(f"{run_status(root / name)}\t{name}")
            return 0
        ranked, without_results = build_leaderboard(root, args.runs or None, args.metric)
        print(write_leaderboard(root, ranked, args.metric, without_results), end="")
    except LeaderboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
