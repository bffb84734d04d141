"""The winner of each set of runs on the same folds, and its score corrected for having been chosen
among them (BBC-CV, :mod:`reporting.selection_bias`), with its held-out test score when the runs
hold one out: the number to publish."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from reporting.fold_comparison import why_not_comparable
from reporting.run_entries import Entry, LeaderboardError, metric_number, read_json_or_none
from utils.errors import UserError
from utils.run_dir import RunDir

if TYPE_CHECKING:  # numpy and scipy are loaded only when BBC-CV is computed (see the test of imports)
    import numpy as np

    from reporting.selection_bias import BBCEstimate

log = logging.getLogger("train_clip.leaderboard")

DEFAULT_BBC_RESAMPLES = 1000
DEFAULT_BBC_SEED = 0


@dataclass(frozen=True)
class Winner:
    """The best of the ranked runs that share its folds, and its score corrected for being chosen."""

    run: str
    chosen_from: tuple[str, ...]  # the runs BBC-CV chose among (the winner too), best first
    bbc: BBCEstimate | None  # None: not computed (see notes)
    test_score: float | None  # the ranked metric on the held-out test set (test_metrics.json); None: none
    notes: tuple[str, ...] = ()  # runs left out of the choice and why; why BBC-CV was not computed


def fold_groups(ranked: Sequence[Entry]) -> tuple[list[list[Entry]], list[str]]:
    """The ranked runs in sets that share their folds (each best first: its first run is the set's
    winner), and a note for each run whose folds.json cannot be compared with anything."""
    groups: list[list[Entry]] = []
    notes = []
    for entry in ranked:
        unreadable = why_not_comparable(entry.folds, entry.folds)
        if unreadable is not None:
            notes.append(f"{entry.run}: {unreadable}")
            continue
        group = next((g for g in groups if why_not_comparable(g[0].folds, entry.folds) is None), None)
        if group is None:
            groups.append([entry])
        else:
            group.append(entry)
    return groups, notes


def aligned_rows(first: Entry, first_paths: Sequence[str], first_labels: np.ndarray, entry: Entry,
                 paths: Sequence[str], labels: np.ndarray) -> list[int] | str:
    """The rows of ``entry``'s predictions in ``first``'s image order, or why they cannot be pooled."""
    import numpy as np

    row_of = {path: i for i, path in enumerate(paths)}
    if entry.class_names != first.class_names:
        return f"its classes differ from {first.run}'s"
    if len(row_of) != len(paths) or set(row_of) != set(first_paths):
        return f"its out-of-fold images differ from {first.run}'s"
    rows = [row_of[path] for path in first_paths]
    if not np.array_equal(labels[rows], first_labels):
        return f"it gives images other true classes than {first.run}"
    return rows


def pooled_predictions(root: Path, group: Sequence[Entry]) -> tuple[list[str], np.ndarray, np.ndarray, list[str],
                                                                    list[str]]:
    """The out-of-fold predictions of a set of runs on the same folds, row for row alike.

    Returns the runs used, their (R, N, C) probabilities, the N labels and image paths (in the first
    readable run's order), and a note for each run left out and why.
    """
    import numpy as np

    from reporting.report import load_prediction_rows  # numpy and scipy: only when asked (module docstring)

    used: list[str] = []
    probs: list[np.ndarray] = []
    notes: list[str] = []
    reference: tuple[Entry, list[str], np.ndarray] | None = None
    for entry in group:
        try:
            if not entry.class_names:
                raise LeaderboardError("its cv_summary.json lists no class names")
            paths, labels, run_probs = load_prediction_rows(RunDir(root / entry.run).oof_predictions,
                                                            entry.class_names)
        except UserError as exc:
            notes.append(f"{entry.run} left out: {exc}")
            continue
        reference = reference or (entry, paths, labels)
        rows = aligned_rows(*reference, entry, paths, labels)
        if isinstance(rows, str):
            notes.append(f"{entry.run} left out: {rows}")
            continue
        used.append(entry.run)
        probs.append(run_probs[rows])
    if reference is None:
        return [], np.empty((0, 0, 0)), np.empty(0, dtype=np.int64), [], notes
    return used, np.stack(probs), reference[2], reference[1], notes


def image_groups(folds: Any, paths: Sequence[str]) -> list[str] | None:
    """Each image's group (patient) from folds.json, or None when the folds were not grouped."""
    mapping = folds.get("groups") if isinstance(folds, dict) else None
    if not isinstance(mapping, dict):
        return None
    missing = [p for p in paths if p not in mapping]
    if missing:
        raise LeaderboardError(f"folds.json groups no image {missing[0]} (and {len(missing) - 1} more)")
    return [str(mapping[p]) for p in paths]


def held_out_score(root: Path, run: str, metric: str) -> float | None:
    """``metric`` on the run's held-out test set (its test_metrics.json), None when it has none."""
    document = read_json_or_none(RunDir(root / run).test_metrics)
    metrics = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(metrics, dict):
        return None
    try:
        return metric_number(metrics.get(metric))
    except TypeError:
        return None


def winner_of(root: Path, group: Sequence[Entry], metric: str, n_resamples: int, seed: int) -> Winner:
    """The first (best) run of ``group`` with BBC-CV over the group's runs and its test score."""
    top = group[0]
    score = held_out_score(root, top.run, metric)
    notes = []
    if score is None and top.folds.get("test"):
        notes.append(f"{top.run} holds out a test set (folds.json) but has no readable test_metrics.json")
    if n_resamples == 0:
        return Winner(top.run, tuple(e.run for e in group), None, score, tuple(notes + ["BBC-CV off (0 resamples)"]))
    used, probs, labels, paths, left_out = pooled_predictions(root, group)
    notes += left_out
    if top.run not in used:
        return Winner(top.run, tuple(used), None, score,
                      tuple(notes + [f"BBC-CV not computed: {top.run}'s out-of-fold predictions are unusable"]))
    from reporting.selection_bias import bbc_cv

    try:
        groups = image_groups(top.folds, paths)
    except LeaderboardError as exc:
        return Winner(top.run, tuple(used), None, score, tuple(notes + [f"BBC-CV not computed: {exc}"]))
    log.info("BBC-CV of %s among %d run(s): %d resamples of %d images", top.run, len(used), n_resamples,
             len(labels))
    estimate = bbc_cv(probs, labels, metric, groups, n_resamples, seed)
    return Winner(top.run, tuple(used), estimate, score, tuple(notes))


def find_winners(root: Path, ranked: Sequence[Entry], metric: str, n_resamples: int = DEFAULT_BBC_RESAMPLES,
                 seed: int = DEFAULT_BBC_SEED) -> tuple[list[Winner], list[str]]:
    """The winner of each set of runs on the same folds, best set first, and the runs in no set."""
    groups, notes = fold_groups(ranked)
    return [winner_of(root, group, metric, n_resamples, seed) for group in groups], notes
