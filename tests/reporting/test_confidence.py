"""Issue 12: bootstrap confidence intervals of the pooled and held-out metrics."""
from __future__ import annotations

import numpy as np
import pytest

from reporting.confidence import bootstrap_intervals, scalar_names, weighted_metric, weighted_metrics
from reporting.metrics import classification_metrics, scalar_metrics


def predictions(n: int, n_classes: int = 3, seed: int = 0, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mostly right predictions; rounding makes tied scores, which AUC must count as halves."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    probs = rng.dirichlet(np.ones(n_classes), n)
    probs[np.arange(n), y] += 0.5
    return y, np.round(probs / probs.sum(axis=1, keepdims=True), decimals)


@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_weighted_metrics_with_unit_weights_are_the_reported_metrics(n_classes):
    y, probs = predictions(80, n_classes, seed=n_classes)
    reference = classification_metrics(y, probs)
    values = weighted_metrics(y, probs, np.ones((1, len(y))))
    for name, value in scalar_metrics(reference).items():
        assert values[name][0] == pytest.approx(value), name
    np.testing.assert_allclose(values["sensitivity"][:, 0], [c["recall"] for c in reference["per_class"]])
    np.testing.assert_allclose(values["specificity"][:, 0], [c["specificity"] for c in reference["per_class"]])


def test_integer_weights_equal_repeating_the_images():
    y, probs = predictions(40, 4, seed=3)
    counts = np.random.default_rng(1).integers(0, 4, len(y))
    repeated = np.repeat(np.arange(len(y)), counts)
    reference = scalar_metrics(classification_metrics(y[repeated], probs[repeated]))
    values = weighted_metrics(y, probs, counts[None, :].astype(float))
    for name, value in reference.items():
        assert values[name][0] == pytest.approx(value), name


@pytest.mark.parametrize("n_classes", [2, 7])
def test_one_metric_alone_is_that_metric_of_all_of_them(n_classes):
    y, probs = predictions(50, n_classes, seed=5)
    weights = np.random.default_rng(2).integers(0, 3, (6, len(y))).astype(float)
    weights[0] = 0  # an empty resample: undefined alike
    with np.errstate(all="ignore"):
        every = weighted_metrics(y, probs, weights)
        for name in scalar_names(y, probs):
            np.testing.assert_array_equal(weighted_metric(y, probs, weights, name), every[name], err_msg=name)


def test_intervals_hold_the_estimate_and_narrow_as_the_data_grows():
    widths = {}
    for n in (60, 600):
        y, probs = predictions(n, 3, seed=7)
        point = classification_metrics(y, probs)
        intervals = bootstrap_intervals(y, probs, n_resamples=500, seed=0)
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece"):
            low, high = intervals.scalar[name]
            assert low <= point[name] <= high, (n, name, low, point[name], high)
        for k, per_class in enumerate(intervals.per_class):
            low, high = per_class["sensitivity"]
            assert low <= point["per_class"][k]["recall"] <= high
        widths[n] = {name: high - low for name, (low, high) in intervals.scalar.items()}
    for name in widths[60]:
        assert widths[600][name] < widths[60][name] * 0.7, name  # about 1/sqrt(10) as wide


def test_the_seed_fixes_the_intervals_and_the_settings_are_recorded():
    y, probs = predictions(50)
    first = bootstrap_intervals(y, probs, n_resamples=300, seed=5)
    assert first == bootstrap_intervals(y, probs, n_resamples=300, seed=5)
    assert first.scalar != bootstrap_intervals(y, probs, n_resamples=300, seed=6).scalar
    assert first.settings["n_resamples"] == 300 and first.settings["seed"] == 5
    assert first.settings["confidence_level"] == 0.95 and first.settings["resampled_unit"] == "image"


def test_groups_are_resampled_as_a_whole():
    # Each image twice, as one patient's two images: resampling patients draws both copies at
    # once, which is resampling the distinct images; resampling images would split the pairs.
    y, probs = predictions(40, seed=2)
    twice = np.repeat(np.arange(len(y)), 2)
    patients = [f"patient {i:03d}" for i in twice]  # sorted like the images
    by_patient = bootstrap_intervals(y[twice], probs[twice], 400, seed=1, groups=patients)
    assert by_patient.scalar == bootstrap_intervals(y, probs, 400, seed=1).scalar
    assert by_patient.settings["resampled_unit"] == "group"
    by_image = bootstrap_intervals(y[twice], probs[twice], 400, seed=1)
    assert by_image.scalar != by_patient.scalar


def test_a_metric_equal_in_every_resample_falls_back_to_the_percentile_interval():
    y = np.array([0, 1] * 10)
    probs = np.eye(2)[y] * 0.8 + 0.1  # every image right
    intervals = bootstrap_intervals(y, probs, n_resamples=200, seed=0)
    assert intervals.scalar["accuracy"] == [1.0, 1.0]
    assert "accuracy" in intervals.settings["percentile_fallback"]


def test_an_undefined_metric_has_a_null_interval():
    y = np.zeros(10, dtype=int)  # one class only: no ROC-AUC
    probs = np.tile([0.7, 0.3], (10, 1))
    assert bootstrap_intervals(y, probs, n_resamples=100, seed=0).scalar["roc_auc"] == [None, None]


def test_resamples_where_a_metric_is_undefined_are_left_out_of_its_interval():
    # Four images, two per class: about one resample in eight holds one class only and has no AUC.
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    low, high = bootstrap_intervals(y, probs, n_resamples=300, seed=0).scalar["roc_auc"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
