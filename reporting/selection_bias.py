"""The study winner's score corrected for having chosen it: bootstrap bias-corrected CV (BBC-CV).

A study trains many runs on the same folds and crowns the one with the best cross-validated
score. That maximum is optimistic: with enough runs of pure noise, one of them beats chance on the
scored images by luck (Varma & Simon 2006; Cawley & Talbot 2010). BBC-CV (Tsamardinos, Greasidou
& Borboudakis, Machine Learning 2018) removes the optimism without training anything again. From
the pooled out-of-fold predictions of all runs on the same images, each bootstrap resample

1. draws the images (patients, when grouped: all images of a patient together) with replacement;
2. chooses the best run on the drawn (in-bag) images, as the study chose its winner;
3. scores that run on the images not drawn (out-of-bag), which took no part in the choice.

The mean of those out-of-bag scores estimates how well "train every run, keep the best" does on
new images; their 2.5th and 97.5th percentiles are its 95 % interval.

Pure functions over arrays, vectorised over resamples: the metric of a batch of resamples comes
from per-image weights (:func:`reporting.confidence.weighted_metric`, equal to
:func:`reporting.metrics.classification_metrics` at weights of 1), so a metric here means exactly
what it means in every summary.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from reporting.confidence import CONFIDENCE_LEVEL, RESAMPLES_PER_BATCH, units_of, weighted_metric
from reporting.metric_table import metric as metric_row


@dataclass(frozen=True)
class BBCEstimate:
    """The selection-corrected score of "the best of ``n_runs`` runs", and how it was made."""

    metric: str
    estimate: float  # mean over resamples of the chosen run's out-of-bag score
    low: float  # percentile interval of those scores
    high: float
    n_runs: int  # the runs the winner is chosen from
    n_resamples: int  # resamples drawn
    n_defined: int  # of those, the resamples whose out-of-bag score is a number
    chosen: tuple[int, ...]  # per run, how many resamples chose it
    seed: int
    confidence_level: float
    resampled_unit: str  # "image" or "group"


def run_scores(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of every run under every weight row: (R, N, C) probabilities, (B, N) weights → (B, R)."""
    return np.stack([weighted_metric(labels, run_probs, weights, metric) for run_probs in probs], axis=1)


def chosen_runs(in_bag: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """The best run of each row of (B, R) scores (the first on ties); -1 where no score is a number."""
    signed = np.where(np.isnan(in_bag), -np.inf, in_bag if higher_is_better else -in_bag)
    return np.where(np.isneginf(signed).all(axis=1), -1, signed.argmax(axis=1))


def chosen_out_of_bag(labels: np.ndarray, probs: np.ndarray, out_of_bag: np.ndarray, best: np.ndarray,
                      metric: str) -> np.ndarray:
    """Each resample's chosen run ``best`` scored on its (B, N) ``out_of_bag`` images; NaN where none was chosen.

    Only the chosen run is scored, one run at a time over the resamples that chose it.
    """
    scores = np.full(len(best), np.nan)
    for run in np.unique(best[best >= 0]):
        rows = best == run
        scores[rows] = weighted_metric(labels, probs[run], out_of_bag[rows].astype(np.float64), metric)
    return scores


def bbc_cv(probs: np.ndarray, labels: Sequence[int] | np.ndarray, metric: str,
           groups: Sequence[Any] | None, n_resamples: int, seed: int,
           confidence_level: float = CONFIDENCE_LEVEL) -> BBCEstimate:
    """BBC-CV of choosing the best of R runs on ``metric``.

    ``probs`` has shape (R, N, C): each run's out-of-fold probabilities of the same N images, in the
    same order; ``labels`` their true classes; ``groups`` (one per image, e.g. a patient id) makes
    whole groups the resampled unit.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 3 or probs.shape[1] != len(labels) or not len(labels) or not len(probs):
        raise ValueError(f"expected (runs, N, classes) probabilities of N labelled images, got {probs.shape} "
                         f"for {labels.shape} labels")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    higher_is_better = metric_row(metric).higher_is_better
    unit_of = units_of(len(labels), groups)
    n_units = int(unit_of.max()) + 1
    rng = np.random.default_rng(seed)
    out_of_bag, chosen = [], []
    for start in range(0, n_resamples, RESAMPLES_PER_BATCH):  # bounds memory: (batch, N) weights
        batch = min(RESAMPLES_PER_BATCH, n_resamples - start)
        drawn = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=batch)  # (batch, units) counts
        in_bag = drawn[:, unit_of].astype(np.float64)
        with np.errstate(all="ignore"):  # a class absent from a resample: its terms are NaN or skipped
            best = chosen_runs(run_scores(labels, probs, in_bag, metric), higher_is_better)
            out_of_bag.append(chosen_out_of_bag(labels, probs, in_bag == 0, best, metric))
        chosen.append(best)
    scores, picks = np.concatenate(out_of_bag), np.concatenate(chosen)
    defined = np.isfinite(scores)
    alpha = (1 - confidence_level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no defined resample at all: NaN, said by n_defined
        estimate = float(np.nanmean(scores))
        low, high = np.nanquantile(scores, [alpha, 1 - alpha])
    return BBCEstimate(metric, estimate, float(low), float(high), len(probs), n_resamples, int(defined.sum()),
                       tuple(int(n) for n in np.bincount(picks[picks >= 0], minlength=len(probs))), seed,
                       confidence_level, "image" if groups is None else "group")
