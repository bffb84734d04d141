"""The quality benchmark's verdict (benchmarks/bench_quality.py) on planted differences; nothing trains."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from benchmarks.bench_quality import (DEFAULT_SEEDS, N_SPLITS, RECIPES, NotComparable, compare, comparisons,
                                      idle_wall_estimate)

# Fold sizes of the textures set (373 images, 5 folds).
N_TRAIN, N_VAL = 298.4, 74.6


def baseline_scores(rng: np.random.Generator) -> dict[tuple[int, int], float]:
    """Balanced accuracies as the benchmark sees them: ~0.9, folds and seeds spread by ~0.03."""
    return {(seed, fold): float(np.clip(rng.normal(0.9, 0.03), 0, 1))
            for seed in DEFAULT_SEEDS for fold in range(1, N_SPLITS + 1)}


def shifted(scores: dict[tuple[int, int], float], shift: float,
            rng: np.random.Generator) -> dict[tuple[int, int], float]:
    """Every pair moved by ``shift`` plus its own noise: a second run on the same folds differs by ~0.015."""
    return {key: value + shift + float(rng.normal(0, 0.015)) for key, value in scores.items()}


@pytest.mark.parametrize("shift, verdict", [(-0.05, "worse"), (0.05, "better")])
def test_a_planted_shift_of_five_points_is_found(shift: float, verdict: str) -> None:
    rng = np.random.default_rng(28)
    baseline = baseline_scores(rng)
    comparison = compare(shifted(baseline, shift, rng), baseline, N_TRAIN, N_VAL)
    assert comparison.verdict == verdict
    assert comparison.pairs == len(DEFAULT_SEEDS) * N_SPLITS
    assert comparison.mean_difference == pytest.approx(shift, abs=0.01)


def test_identical_runs_are_the_same() -> None:
    baseline = baseline_scores(np.random.default_rng(28))
    comparison = compare(dict(baseline), baseline, N_TRAIN, N_VAL)
    assert (comparison.verdict, comparison.mean_difference, comparison.p_value) == ("same", 0.0, 1.0)


def test_noise_alone_is_the_same() -> None:
    """Two runs that differ only by run-to-run noise: no verdict either way."""
    rng = np.random.default_rng(28)
    baseline = baseline_scores(rng)
    assert compare(shifted(baseline, 0.0, rng), baseline, N_TRAIN, N_VAL).verdict == "same"


def test_the_detectable_difference_is_the_size_the_test_calls() -> None:
    """A shift just above the reported detectable size is called, one just below is not."""
    rng = np.random.default_rng(28)
    baseline = baseline_scores(rng)
    noise = shifted(baseline, 0.0, rng)
    noise_only = compare(noise, baseline, N_TRAIN, N_VAL)
    for factor, verdict in [(1.05, "worse"), (0.95, "same")]:
        # The same spread of differences, their mean moved to -factor x the detectable size.
        current = {key: value - noise_only.mean_difference - factor * noise_only.detectable
                   for key, value in noise.items()}
        assert compare(current, baseline, N_TRAIN, N_VAL).verdict == verdict


def test_only_shared_pairs_count() -> None:
    """A seed that only one side ran is left out, not paired with something else."""
    rng = np.random.default_rng(28)
    baseline = baseline_scores(rng)
    current = shifted(baseline, -0.05, rng)
    current.update({(99, fold): 1.0 for fold in range(1, N_SPLITS + 1)})
    assert compare(current, baseline, N_TRAIN, N_VAL).pairs == len(DEFAULT_SEEDS) * N_SPLITS


def test_fewer_than_two_pairs_is_refused() -> None:
    with pytest.raises(ValueError, match="two"):
        compare({(1, 1): 0.9}, {(1, 1): 0.8}, N_TRAIN, N_VAL)


RECIPE = {**asdict(RECIPES["textures"]), "data_sha256": "d"}


def result_document(scores: dict[tuple[int, int], float], fingerprint: str, recipe: dict = RECIPE) -> dict:
    """A result of the benchmark, one data set, as measure() writes it."""
    return {"data_sets": ["textures"], "recipes": {"textures": recipe}, "runs": [
        {"data_set": "textures", "seed": seed, "folds_sha256": fingerprint,
         "folds": [{"fold": fold, "balanced_accuracy": scores[seed, fold], "n_train": 298, "n_val": 75}
                   for fold in range(1, N_SPLITS + 1)]} for seed in DEFAULT_SEEDS]}


def test_results_on_other_folds_are_not_paired() -> None:
    rng = np.random.default_rng(28)
    baseline = baseline_scores(rng)
    current = shifted(baseline, -0.05, rng)
    assert comparisons(result_document(current, "a"), result_document(baseline, "a"))["textures"].verdict == "worse"
    with pytest.raises(NotComparable, match="other folds"):
        comparisons(result_document(current, "a"), result_document(baseline, "b"))


@pytest.mark.parametrize("change", [{"epochs": RECIPE["epochs"] + 1}, {"data_sha256": "other images"}])
def test_a_baseline_of_another_recipe_or_data_is_refused_in_one_line(change: dict) -> None:
    scores = baseline_scores(np.random.default_rng(28))
    baseline = result_document(scores, "a", {**RECIPE, **change})
    with pytest.raises(NotComparable) as refused:
        comparisons(result_document(scores, "a"), baseline, "quality_old.json")
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("quality_old.json was measured with another recipe or other data for textures")


def test_a_baseline_of_the_old_single_recipe_format_is_refused() -> None:
    """The first stored results had one "recipe" for both sets (6 epochs at 32 px): never paired with new ones."""
    scores = baseline_scores(np.random.default_rng(28))
    old = {key: value for key, value in result_document(scores, "a").items() if key != "recipes"}
    old["recipe"] = {key: value for key, value in RECIPE.items() if key != "data_sha256"}
    with pytest.raises(NotComparable, match="another recipe"):
        comparisons(result_document(scores, "a"), old)


def test_the_idle_wall_estimate_fills_free_cores_in_order() -> None:
    # Two cores after a 10 s probe: 100 and 80 start at once, 30 follows the 80 (at 90), ending at 120.
    assert idle_wall_estimate(10, [100, 80, 30], jobs=2) == 120
    assert idle_wall_estimate(10, [100, 80, 30], jobs=1) == 220
