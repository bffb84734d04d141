"""reporting/selection_bias.py: BBC-CV on synthetic out-of-fold predictions."""
from __future__ import annotations

import numpy as np
import pytest

from reporting.confidence import weighted_metrics
from reporting.selection_bias import bbc_cv, chosen_runs

CHANCE = 0.5  # balanced accuracy of guessing, two classes


def noise_runs(rng: np.random.Generator, n_runs: int, n_images: int) -> np.ndarray:
    """(runs, images, 2) probabilities that know nothing about the labels."""
    p = rng.random((n_runs, n_images))
    return np.stack([1 - p, p], axis=-1)


def pooled(labels: np.ndarray, probs: np.ndarray, metric: str = "balanced_accuracy") -> np.ndarray:
    """Each run's metric on all its out-of-fold images (what a study ranks on)."""
    return np.array([weighted_metrics(labels, p, np.ones((1, len(labels))))[metric][0] for p in probs])


def test_the_best_of_many_noise_runs_beats_chance_but_its_bbc_interval_holds_chance() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    probs = noise_runs(rng, 30, 200)
    raw = pooled(labels, probs)
    # One standard error of a balanced accuracy on 200 images is about 0.035: the best of 30 is
    # about two of them above chance.
    standard_error = np.sqrt(CHANCE * (1 - CHANCE) / len(labels))
    assert raw.max() > CHANCE + 1.5 * standard_error
    result = bbc_cv(probs, labels, "balanced_accuracy", None, n_resamples=500, seed=3)
    assert result.low < CHANCE < result.high
    # Most of the optimism is gone (BBC-CV may err a little low: it scores on ~37 % of the images).
    assert result.estimate < CHANCE + 0.5 * (raw.max() - CHANCE)
    assert result.n_runs == 30 and result.n_defined == 500 and sum(result.chosen) == 500
    assert max(result.chosen) < 500  # the in-bag winner changes with the resample: it is luck


def test_one_genuinely_good_run_among_noise_keeps_its_score() -> None:
    rng = np.random.default_rng(2)
    n_images = 300
    labels = rng.integers(0, 2, n_images)
    probs = noise_runs(rng, 10, n_images)
    right = rng.random(n_images) < 0.8  # the good run is right on about 80 % of the images
    p_one = np.where(right == (labels == 1), 0.9, 0.1)
    probs[4] = np.stack([1 - p_one, p_one], axis=-1)
    good = pooled(labels, probs)[4]
    result = bbc_cv(probs, labels, "balanced_accuracy", None, n_resamples=500, seed=5)
    assert result.chosen[4] == 500  # chosen in every resample
    # About 37 % of the images are out of bag; their score scatters by sqrt(p(1-p)/(0.37 N)) around
    # the run's pooled score, and the mean of 500 such scores by far less.
    spread = np.sqrt(good * (1 - good) / (0.37 * n_images))
    assert abs(result.estimate - good) < spread / 3
    assert result.low < good < result.high


def test_groups_are_resampled_as_whole_patients() -> None:
    # Each patient's 5 images are copies (same label, same predictions): resampling patients must give
    # exactly the result of resampling the patients' single images, copies or not.
    rng = np.random.default_rng(4)
    n_patients, copies = 60, 5
    labels = rng.integers(0, 2, n_patients)
    probs = noise_runs(rng, 6, n_patients)
    patients = [f"patient{p:03d}" for p in range(n_patients)]
    by_patient = bbc_cv(probs, labels, "balanced_accuracy", None, n_resamples=300, seed=7)
    grouped = bbc_cv(np.repeat(probs, copies, axis=1), np.repeat(labels, copies), "balanced_accuracy",
                     np.repeat(patients, copies), n_resamples=300, seed=7)
    assert grouped.resampled_unit == "group" and by_patient.resampled_unit == "image"
    assert grouped.chosen == by_patient.chosen
    np.testing.assert_allclose([grouped.estimate, grouped.low, grouped.high],
                               [by_patient.estimate, by_patient.low, by_patient.high], rtol=1e-12)
    # Resampling the copies one by one would think it had 5 times the data: a narrower interval.
    per_image = bbc_cv(np.repeat(probs, copies, axis=1), np.repeat(labels, copies), "balanced_accuracy", None,
                       n_resamples=300, seed=7)
    assert per_image.high - per_image.low < 0.7 * (grouped.high - grouped.low)


def test_roc_auc_and_a_run_order_tie() -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 90)
    probs = rng.dirichlet(np.ones(3), size=(4, 90))
    result = bbc_cv(probs, labels, "roc_auc", None, n_resamples=50, seed=0)
    assert 0 < result.low <= result.estimate <= result.high < 1
    twins = bbc_cv(np.stack([probs[0], probs[0]]), labels, "accuracy", None, n_resamples=50, seed=0)
    assert twins.chosen == (50, 0)  # equal runs: the first is chosen, as the leaderboard's order would


def test_chosen_runs_skips_undefined_scores_and_follows_the_metrics_direction() -> None:
    scores = np.array([[0.2, np.nan, 0.7], [np.nan, np.nan, np.nan], [0.5, 0.1, 0.3]])
    assert chosen_runs(scores, higher_is_better=True).tolist() == [2, -1, 0]
    assert chosen_runs(scores, higher_is_better=False).tolist() == [0, -1, 1]


@pytest.mark.parametrize("shape, n_labels", [((5, 2), 5), ((2, 5, 2), 4), ((0, 5, 2), 5)])
def test_mismatched_arrays_are_refused(shape: tuple[int, ...], n_labels: int) -> None:
    with pytest.raises(ValueError, match="expected"):
        bbc_cv(np.full(shape, 0.5), np.zeros(n_labels, dtype=int), "accuracy", None, 10, 0)
