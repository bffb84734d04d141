"""Issue 21: no choice is made on the images that are scored.

On labels drawn at random the honest pooled estimate of balanced accuracy is chance (1/4 here).
Choosing each fold's epoch on the fold's own validation images (--select-on fold) keeps the
maximum of NUM_EPOCHS + 1 noisy scores of 4 images per fold, so it lands above chance; choosing
on an inner split of the training images (the default) leaves the scored images out of every
choice, and its estimate's 95% CI holds chance.

Why it holds beyond this seed: under inner selection the out-of-fold predictions are independent
of the scored labels, so the interval misses chance from above in about 2.5% of draws whatever the
seed. Under fold selection the lift grows with sqrt(N_FOLDS) times the expected maximum of the
epochs' scores (many small folds, a learning rate that keeps the predictions moving, no warm-up);
measured while writing this test with 8 folds of 8 images, other seeds and text-tower
initialisations: fold 0.438 [0.343, 0.573] vs inner 0.266 [0.191, 0.390]; fold 0.359 [0.261,
0.498] vs inner 0.219 [0.132, 0.318]; fold 0.359 [0.255, 0.467] vs inner 0.266 [0.172, 0.375];
once fold 0.313 [0.222, 0.432] vs inner 0.313, when the predictions hardly moved between epochs.
So the test uses 16 folds of 4 images (one per class), which doubles sqrt(N_FOLDS)'s part of the
lift (measured: fold 0.391 [0.292, 0.500] vs inner 0.266 [0.163, 0.372]); the text tower is seeded
so that the test does not change with the session's. It takes about two minutes on two shared cores.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import train_clip
from reporting.calibration import apply_temperature, fit_temperature
from tests.helpers import make_tiny_text_encoder
from training.ensemble import load_fold_model
from utils.io import load_checkpoint

N_IMAGES, N_CLASSES, NUM_EPOCHS, N_FOLDS, SEED = 64, 4, 10, 16, 1
CHANCE = 1 / N_CLASSES


def noise_images(root: Path) -> Path:
    """Uniform noise, the class drawn at random: nothing to learn but the training images themselves."""
    rng = np.random.default_rng(SEED)
    labels = rng.permutation(np.arange(N_IMAGES) % N_CLASSES)
    for i, k in enumerate(labels):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(folder / f"img_{i:03d}.png")
    return root


def train(root: Path, text_encoder: Path, name: str, *extra: str) -> dict:
    out = root / name
    argv = ["--data-dir", str(root / "data"), "--output-dir", str(out), "--log-file", str(root / f"{name}.log"),
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{text_encoder}", "--freeze-text",
            "--img-size", "16", "--embed-dim", "8", "--epochs", str(NUM_EPOCHS), "--batch-size", "16",
            "--learning-rate", "1e-2", "--warmup-epochs", "0", "--loss", "ce", "--augmentation", "none", "--num-workers", "0",
            "--text-template", "{class_name}", "--use-cv", "--n-splits", str(N_FOLDS),
            "--bootstrap-resamples", "300", "--seed", str(SEED), "--random-state", str(SEED), *extra]
    assert train_clip.main(argv) == 0
    return json.loads((out / "cv_summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def random_label_runs(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("random_labels")
    noise_images(root / "data")
    # Its own text tower, seeded: the session's random one changes how far fold selection lifts the score
    # (see the module's docstring), and this test should not change with it.
    torch.manual_seed(SEED)
    (root / "text").mkdir()
    tiny_text_encoder = make_tiny_text_encoder(root / "text", seed=SEED)
    # The report's pictures and gallery are not what is tested here, and cost more than the training.
    monkeypatch_module.setattr(train_clip, "write_reports", lambda run: None)
    return root, {"inner": train(root, tiny_text_encoder, "inner"),
                  "fold": train(root, tiny_text_encoder, "fold", "--select-on", "fold"),
                  # Deliberately over-confident: the logit scale starts at its maximum and barely moves
                  # in two slow epochs, so the probabilities are near one-hot and right 1 time in 4.
                  "calibrated": train(root, tiny_text_encoder, "calibrated", "--calibrate", "temperature",
                                      "--temperature", "0.01", "--learning-rate", "1e-4", "--epochs", "2",
                                      "--n-splits", "4")}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_on_random_labels_inner_selection_holds_chance_and_fold_selection_does_not(random_label_runs):
    _, summaries = random_label_runs
    inner, fold = summaries["inner"], summaries["fold"]
    low, high = inner["oof_ci"]["balanced_accuracy"]
    assert low <= CHANCE <= high, (low, high)
    assert inner["selection"] == {"on": "inner", "inner_val_fraction": 0.15, "optimistic": False}
    fold_low, _ = fold["oof_ci"]["balanced_accuracy"]
    assert fold_low > CHANCE, fold["oof_ci"]["balanced_accuracy"]  # "significant" on noise
    assert fold["oof"]["balanced_accuracy"] - inner["oof"]["balanced_accuracy"] >= 0.1
    assert fold["selection"] == {"on": "fold", "inner_val_fraction": None, "optimistic": True}


def test_inner_selection_chooses_on_the_inner_curve_and_reports_the_fold_there(random_label_runs):
    root, summaries = random_label_runs
    for entry in summaries["inner"]["folds"]:
        history = json.loads((root / "inner" / f"fold_{entry['fold']}" / "history.json").read_text())
        inner = [row["inner_balanced_accuracy"] for row in history]
        assert entry["best_epoch"] == inner.index(max(inner))  # the first of equals, as is_better keeps it
        assert entry["metrics"]["balanced_accuracy"] == history[entry["best_epoch"]]["balanced_accuracy"]


def test_temperature_lowers_the_ece_of_an_over_confident_model_and_changes_no_prediction(random_label_runs):
    root, summaries = random_label_runs
    calibration = summaries["calibrated"]["calibration"]
    assert "calibration" not in summaries["inner"]  # --calibrate none
    # Confidently wrong three times in four: the temperatures fitted on the inner splits soften it.
    assert calibration["fitted_on"] == "inner validation split"
    assert all(t > 1 for t in calibration["temperatures"])
    assert calibration["oof_ece_after"] < calibration["oof_ece_before"] / 2
    for k in range(1, len(calibration["temperatures"]) + 1):
        result = json.loads((root / "calibrated" / f"fold_{k}" / "result.json").read_text())
        before, after = np.asarray(result["uncalibrated_val_probs"]), np.asarray(result["val_probs"])
        assert (before.argmax(axis=1) == after.argmax(axis=1)).all()
        np.testing.assert_allclose(after.sum(axis=1), 1.0, rtol=1e-12)  # float64 softmax rows
        # predict.py rebuilds the fold model with the same temperature, from the checkpoint alone.
        checkpoint = root / "calibrated" / f"fold_{k}" / "checkpoint_best.pth"
        assert load_checkpoint(checkpoint)["temperature"] == result["temperature"]
        model, meta = load_fold_model(k, checkpoint, torch.device("cpu"))
        assert model.temperature == meta["temperature"] == result["temperature"]


def test_predict_applies_the_fold_temperature(random_label_runs, tmp_path: Path):
    root, _ = random_label_runs
    run = root / "calibrated"
    with (run / "oof_predictions.csv").open(encoding="utf-8", newline="") as handle:
        oof = [row for row in csv.DictReader(handle) if row["fold"] == "1"]
    images = tmp_path / "images"
    for row in oof:
        (images / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        (images / row["path"]).write_bytes((root / "data" / row["path"]).read_bytes())
    output = tmp_path / "predictions.csv"
    assert predict.main(["--run-dir", str(run), "--images", str(images), "--output", str(output), "--fold", "1",
                         "--cpu"]) == 0
    with output.open(encoding="utf-8", newline="") as handle:
        predicted = {row["path"]: row for row in csv.DictReader(handle)}
    columns = [f"prob_class_{k}" for k in range(N_CLASSES)]
    # Both files round to 6 decimals: 2e-6 covers two roundings and float32 evaluation.
    np.testing.assert_allclose([[float(predicted[row["path"]][c]) for c in columns] for row in oof],
                               [[float(row[c]) for c in columns] for row in oof], atol=2e-6)


def test_the_fitted_temperature_recovers_a_known_over_confidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(20000, 3))
    true = torch.from_numpy(logits).softmax(dim=1).numpy()
    labels = (rng.random((len(true), 1)) > true.cumsum(axis=1)).sum(axis=1)  # one draw from each row
    overconfident = torch.from_numpy(3 * logits).softmax(dim=1).numpy()  # the model reports 3x its logits
    temperature = fit_temperature(labels, overconfident)
    # With 20,000 labels the fitted temperature spreads by about 0.02 over seeds; 5% is eight of those.
    assert temperature == pytest.approx(3.0, rel=0.05)
    np.testing.assert_allclose(apply_temperature(overconfident, temperature), true, atol=0.02)
    assert (apply_temperature(overconfident, temperature).argmax(axis=1) == overconfident.argmax(axis=1)).all()
