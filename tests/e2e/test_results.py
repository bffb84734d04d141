"""Issue 5 on a real run: pooled out-of-fold numbers, the held-out test ensemble, the zero-shot epoch."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import train_clip
from reporting.metrics import classification_metrics
from tests.equivalence import assert_csv_probabilities_sum_to_one
from tests.helpers import make_image_tree
from utils.io import load_checkpoint

CLASSES = {"a": 10, "b": 10, "c": 10}


@pytest.fixture(scope="module")
def run_with_test_set(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("results")
    data = make_image_tree(root / "data", CLASSES)
    out = root / "out"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--log-file", str(root / "run.log"),
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{tiny_text_encoder}", "--img-size", "32",
            "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--learning-rate", "1e-3",
            "--use-cv", "--n-splits", "3", "--test-fraction", "0.3", "--monitor", "macro_f1"]
    assert train_clip.main(argv) == 0
    return data, out


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_test_set_is_stratified_and_disjoint_from_every_fold(run_with_test_set):
    _, out = run_with_test_set
    folds = read(out / "folds.json")
    test = set(folds["test"])
    assert len(test) == 9 and {p.split("/")[0] for p in test} == set(CLASSES)
    assert sorted(len([p for p in test if p.startswith(c + "/")]) for c in CLASSES) == [3, 3, 3]
    for fold in folds["folds"]:
        assert not test & (set(fold["train"]) | set(fold["val"]))
    validated = [p for fold in folds["folds"] for p in fold["val"]]
    assert len(validated) == len(set(validated)) == 30 - 9


def test_out_of_fold_file_covers_every_image_once_and_matches_the_summary(run_with_test_set):
    _, out = run_with_test_set
    summary = read(out / "cv_summary.json")
    with open(out / "oof_predictions.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    folds = read(out / "folds.json")
    assert sorted(r["path"] for r in rows) == sorted(p for f in folds["folds"] for p in f["val"])
    names = summary["class_names"]
    y_true = np.array([names.index(r["true_class"]) for r in rows])
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    pooled = classification_metrics(y_true, probs)
    assert pooled["accuracy"] == summary["oof"]["accuracy"]
    assert pooled["confusion_matrix"] == summary["oof"]["confusion_matrix"]


def test_test_metrics_are_the_mean_of_the_fold_models(run_with_test_set):
    data, out = run_with_test_set
    report = read(out / "test_metrics.json")
    assert report["ensemble_of_folds"] == [1, 2, 3] and report["n_images"] == 9
    with open(out / "test_predictions.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = report["class_names"]
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    assert_csv_probabilities_sum_to_one(probs)
    y_true = np.array([names.index(r["true_class"]) for r in rows])
    assert classification_metrics(y_true, probs)["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    summary = read(out / "cv_summary.json")
    assert summary["test"]["accuracy"] == report["metrics"]["accuracy"]
    # Each fold's best checkpoint is the epoch the summary names, chosen on --monitor of the inner
    # validation split (the first of equals), and the fold's numbers are that epoch's.
    for fold in summary["folds"]:
        best = load_checkpoint(out / f"fold_{fold['fold']}" / "checkpoint_best.pth")
        assert best["epoch"] == fold["best_epoch"]
        history = read(out / f"fold_{fold['fold']}" / "history.json")
        inner = [row["inner_macro_f1"] for row in history]
        assert fold["best_epoch"] == history[inner.index(max(inner))]["epoch"]
        assert history[fold["best_epoch"]]["macro_f1"] == fold["metrics"]["macro_f1"]


def test_pooled_and_test_metrics_have_seeded_confidence_intervals(run_with_test_set):
    _, out = run_with_test_set
    summary, test = read(out / "cv_summary.json"), read(out / "test_metrics.json")
    assert summary["ci_settings"]["n_resamples"] == 1000 and summary["ci_settings"]["seed"] == 42
    for metrics, intervals in ((summary["oof"], summary["oof_ci"]), (test["metrics"], test["ci"])):
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
            low, high = intervals[name]
            assert low <= metrics[name] <= high, name
    assert summary["test_ci"] == test["ci"] and len(test["per_class_ci"]) == len(CLASSES)
    low, high = summary["oof_ci"]["accuracy"]
    assert f"[{low:.4f}, {high:.4f}]" in (out / "report.md").read_text(encoding="utf-8")


def test_report_ends_with_the_methods_of_this_run(run_with_test_set):
    _, out = run_with_test_set
    methods = (out / "report.md").read_text(encoding="utf-8").split("## Methods")[1]
    assert "30 images in 3 classes: a (10), b (10), c (10)" in methods
    assert "30% of the images (9) was held out" in methods and "stratified 3-fold" in methods
    assert "image encoder starnet_s050 (randomly initialised)" in methods and "32×32 pixels" in methods
    assert "best inner-validation macro_f1" in methods and "for up to 2 epochs" in methods
    environment = read(out / "cv_summary.json")["environment"]
    assert f"torch {environment['versions']['torch']}" in methods and "trained on cpu" in methods


def test_zero_shot_epoch_and_report(run_with_test_set):
    _, out = run_with_test_set
    history = read(out / "fold_1" / "history.json")
    assert history[0]["epoch"] == 0 and "train_loss" not in history[0]
    report = (out / "report.md").read_text(encoding="utf-8")
    for picture in ("learning_curves", "confusion_matrix", "roc_curves", "reliability_diagram",
                    "test_confusion_matrix"):
        png = out / "plots" / f"{picture}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{picture}.png" in report


def test_tensorboard_logs_every_epoch_of_every_fold(tmp_path, tiny_text_encoder):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    assert train_clip.main(["--data-dir", str(data), "--output-dir", str(out), "--log-file", str(tmp_path / "l.log"),
                            "--text-encoder", f"hf:{tiny_text_encoder}", "--img-size", "32", "--epochs", "2",
                            "--batch-size", "2", "--num-workers", "0", "--use-cv", "--n-splits", "2",
                            "--tensorboard"]) == 0
    for fold in (1, 2):
        events = EventAccumulator(str(out / "tensorboard" / f"fold_{fold}")).Reload()
        assert [e.step for e in events.Scalars("balanced_accuracy")] == [0, 1, 2]
        assert [e.step for e in events.Scalars("train_loss")] == [1, 2]
        assert [e.step for e in events.Scalars("inner_balanced_accuracy")] == [0, 1, 2]
