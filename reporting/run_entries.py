"""The finished runs of a study as the leaderboard reads them: one :class:`Entry` per run folder,
from its ``cv_summary.json`` and ``folds.json`` (docs/design.md §6)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reporting.metric_table import HEADLINE_METRICS
from reporting.run_summary import RunSummary, SummaryError
from utils.errors import UserError
from utils.run_dir import RunDir

LEADERBOARD_METRICS = HEADLINE_METRICS  # in every summary: each finished run has them all


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
    class_names: tuple[str, ...] = field(default=(), compare=False)
    # Whether its checkpoints were chosen on the very images that score them (cv_summary.json "selection").
    optimistic: bool = field(default=False, compare=False)
    fine_tuning: str = ""  # the methods beyond the plain recipe (reporting.finetuning), "" for none


def metric_number(value: Any) -> float:
    """A metric value as a float; NaN for null (e.g. AUC of a fold missing a class)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def parse_summary(data: Any, run: str) -> Entry | None:
    """The leaderboard entry of a ``cv_summary.json`` document; None when it is not complete.

    Complete means: a whole run summary (every planned fold is there, :class:`RunSummary`) whose
    mean, std and wall time of each leaderboard metric are numbers (the trainer writes the file once,
    at the very end).
    """
    try:
        summary = RunSummary.from_document(data, run)
        means = {key: metric_number(summary.mean[key]) for key in LEADERBOARD_METRICS}
        stds = {key: metric_number(summary.std[key]) for key in LEADERBOARD_METRICS}
        wall_time = metric_number(summary.wall_time_s)
    except (SummaryError, KeyError, TypeError):
        return None
    return Entry(run, summary.image_encoder, summary.text_encoder, summary.n_splits, means, stds, wall_time,
                 {key: summary.metric_by_fold(key) for key in LEADERBOARD_METRICS},
                 class_names=tuple(summary.class_names), optimistic=summary.selection.optimistic,
                 fine_tuning=str(summary.section("fine_tuning") or ""))


def read_entry(run_dir: Path) -> Entry | None:
    """The entry of ``run_dir`` (with its folds.json), or None when it holds no complete ``cv_summary.json``."""
    data = read_json_or_none(RunDir(run_dir).summary)
    entry = parse_summary(data, run_dir.name)
    return entry if entry is None else replace(entry, folds=read_json_or_none(RunDir(run_dir).folds))


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError):
        return None


def find_runs(root: Path) -> list[str]:
    """Folders directly under ``root`` that a training run wrote (they hold its config.json)."""
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (RunDir(p).summary.is_file() or RunDir(p).config.is_file()))
