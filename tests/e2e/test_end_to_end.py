"""One tiny cross-validated run and one single-split run, end to end, and what they leave behind."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import train_clip
import training.checkpoint_format
import training.checkpoints
import training.engine
from data.images import CachedImageDataset, build_image_cache
from data.transforms import ToModelInput
from models.clip_model import build_clip_model, model_kwargs_from_config
from reporting.metrics import classification_metrics
from tests.equivalence import PROBABILITY_TOLERANCE
from tests.helpers import make_image_tree
from training.arguments import config_from_args
from utils.run_dir import RunDir

CLASSES = {"cat_a": 8, "cat_b": 8, "股骨柄A": 8}
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
EPOCHS = 2


def train(root: Path, text_encoder: Path, *extra: str, log_file: Path | None = None) -> tuple[Path, list[str]]:
    data = root / "data"
    if not data.exists():
        make_image_tree(data, CLASSES)
    out = root / "out"
    log_file = log_file or root / "logs" / "run.log"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--log-file", str(log_file),
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{text_encoder}", "--img-size", "32",
            "--epochs", str(EPOCHS), "--batch-size", "4", "--num-workers", "0", "--augmentation", "minimal",
            "--embed-dim", "16", "--learning-rate", "1e-3", "--text-template", "an image of {class_name}", *extra]
    assert train_clip.main(argv) == 0
    return out, argv


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("cv")
    out, argv = train(root, tiny_text_encoder, "--use-cv", "--n-splits", "2")
    return root, out, argv


@pytest.fixture(scope="module")
def holdout_run(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("holdout")
    # The log inside the run folder, as users like it: it must not count as earlier results.
    out, argv = train(root, tiny_text_encoder, log_file=root / "out" / "logs" / "run.log")
    return root, out, argv


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_cv_run_writes_every_file(cv_run):
    root, out, _ = cv_run
    expected = {"config.json", "folds.json", "cv_summary.json", "oof_predictions.csv",
                "fold_1/checkpoint_best.pth", "fold_1/checkpoint_latest.pth", "fold_1/history.json",
                "fold_2/checkpoint_best.pth", "fold_2/checkpoint_latest.pth", "fold_2/history.json"}
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert expected <= written
    assert not [name for name in written if name.endswith(".tmp")]  # atomic writes left no temporaries
    log = (root / "logs" / "run.log").read_text(encoding="utf-8")
    for fold in (1, 2):
        for epoch in range(1, EPOCHS + 1):
            assert f"fold {fold} epoch {epoch:3d}/{EPOCHS}" in log
    assert "CUDA is not available" in log and "Cross-validation summary" in log


def test_the_log_says_once_before_training_that_the_image_encoder_starts_from_random_weights(cv_run):
    root, _, _ = cv_run
    log = (root / "logs" / "run.log").read_text(encoding="utf-8")
    note = "--image-encoder starnet_s050: random initialisation"
    assert log.count(note) == 1 and log.index(note) < log.index("fold 1 epoch")


def test_config_json_is_the_resolved_config_and_a_valid_config_file(cv_run):
    _, out, argv = cv_run
    config = read(out / "config.json")
    assert config == config_from_args(argv).to_dict()
    assert config["use_cv"] is True and config["n_splits"] == 2 and config["batch_size"] == 4
    assert config_from_args(["--config", str(out / "config.json")]) == config_from_args(argv)


def test_folds_json_covers_every_image_once(cv_run):
    root, out, _ = cv_run
    folds = read(out / "folds.json")
    assert folds["mode"] == "cv" and folds["class_names"] == sorted(CLASSES)
    assert [f["fold"] for f in folds["folds"]] == [1, 2]
    all_images = sorted(p.relative_to(root / "data").as_posix() for p in (root / "data").rglob("*.png"))
    validated = sorted(path for fold in folds["folds"] for path in fold["val"])
    assert validated == all_images
    for fold in folds["folds"]:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == all_images
        for name, count in CLASSES.items():
            assert sum(path.split("/")[0] == name for path in fold["val"]) == count // 2


def test_cv_summary_has_the_design_shape(cv_run):
    _, out, _ = cv_run
    summary = read(out / "cv_summary.json")
    assert {"n_splits", "monitor", "class_names", "folds", "mean", "std", "oof", "wall_time_s"} <= set(summary)
    assert summary["n_splits"] == 2 and summary["mode"] == "cv"
    assert summary["monitor"] == "balanced_accuracy" and summary["class_names"] == sorted(CLASSES)
    assert [f["fold"] for f in summary["folds"]] == [1, 2]
    for fold in summary["folds"]:
        assert 0 <= fold["best_epoch"] <= EPOCHS  # 0: the zero-shot baseline before training
        for key in SUMMARY_METRICS:
            assert key in fold["metrics"]
    for key in SUMMARY_METRICS:
        values = [f["metrics"][key] for f in summary["folds"]]
        assert summary["mean"][key] == pytest.approx(np.mean(values))
        assert summary["std"][key] == pytest.approx(np.std(values, ddof=1))  # the folds' sample std
        assert key in summary["oof"]
    assert summary["wall_time_s"] > 0


def test_history_has_one_row_per_epoch(cv_run):
    _, out, _ = cv_run
    for fold in (1, 2):
        history = read(out / f"fold_{fold}" / "history.json")
        assert [row["epoch"] for row in history] == list(range(0, EPOCHS + 1))
        assert "train_loss" not in history[0]  # epoch 0 is the zero-shot evaluation, no training
        for row in history:
            assert {"seconds", "val_loss", *SUMMARY_METRICS} <= set(row)
            assert 0 <= row["accuracy"] <= 1
        for row in history[1:]:
            assert {"train_loss", "lr"} <= set(row) and np.isfinite(row["train_loss"])


def test_oof_predictions_list_every_image_once(cv_run):
    root, out, _ = cv_run
    folds = read(out / "folds.json")
    fold_of = {path: f["fold"] for f in folds["folds"] for path in f["val"]}
    with open(out / "oof_predictions.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(fold_of)
    for row in rows:
        assert int(row["fold"]) == fold_of[row["path"]]
        assert row["true_class"] == row["path"].split("/")[0]
        probs = [float(row[f"prob_{name}"]) for name in sorted(CLASSES)]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert row["predicted_class"] == sorted(CLASSES)[int(np.argmax(probs))]


def test_finished_fold_keeps_the_last_model_without_its_training_state(cv_run):
    _, out, _ = cv_run
    for fold in (1, 2):
        latest = torch.load(out / f"fold_{fold}" / "checkpoint_latest.pth", map_location="cpu", weights_only=True)
        assert latest["epoch"] == EPOCHS and latest["fold"] == fold
        assert {"model", "config", "class_names", "class_texts", "metrics"} <= set(latest)
        assert not set(training.checkpoints.TRAINING_STATE_KEYS) & set(latest)
        last_row = json.loads((out / f"fold_{fold}" / "history.json").read_text())[-1]
        assert latest["metrics"]["accuracy"] == last_row["accuracy"]


def evaluate_checkpoint(checkpoint: Path, data: Path, val_paths: list[str]) -> tuple[dict, np.ndarray]:
    """Rebuild the model from the checkpoint (and its run's frozen_towers.pth) and score the fold's validation images as train_clip does."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = ckpt["config"]
    model = build_clip_model(**model_kwargs_from_config(config), class_texts=ckpt["class_texts"],
                             load_pretrained=False)
    model.load_state_dict(training.checkpoint_format.full_model_state(ckpt, checkpoint))  # + the run's untrained embedding tables
    labels = [ckpt["class_names"].index(path.split("/")[0]) for path in val_paths]
    decoded = build_image_cache([data / path for path in val_paths], config["img_size"], 64, threads=1)
    assert not decoded.failures
    dataset = CachedImageDataset(decoded.cache, range(len(val_paths)), labels, None, ToModelInput())
    loader = DataLoader(dataset, batch_size=config["batch_size"] * 2, shuffle=False)
    probs, y_true, _, _ = training.engine.evaluate(model, loader, torch.device("cpu"), None)
    return classification_metrics(y_true, probs), probs


@pytest.mark.parametrize("fold", [1, 2])
def test_best_checkpoint_reproduces_the_logged_validation_accuracy(cv_run, fold):
    root, out, _ = cv_run
    summary = read(out / "cv_summary.json")
    folds = read(out / "folds.json")
    history = read(out / f"fold_{fold}" / "history.json")
    best_epoch = summary["folds"][fold - 1]["best_epoch"]
    val_paths = folds["folds"][fold - 1]["val"]
    checkpoint = out / f"fold_{fold}" / "checkpoint_best.pth"
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == best_epoch

    metrics, probs = evaluate_checkpoint(checkpoint, root / "data", val_paths)

    logged = history[best_epoch]  # history starts at epoch 0
    assert metrics["accuracy"] == logged["accuracy"] == summary["folds"][fold - 1]["metrics"]["accuracy"]
    assert metrics["balanced_accuracy"] == logged["balanced_accuracy"]
    # The out-of-fold probabilities of this fold are the best epoch's, to the CSV's 6 decimals.
    with open(out / "oof_predictions.csv", encoding="utf-8", newline="") as handle:
        by_path = {row["path"]: row for row in csv.DictReader(handle)}
    written = np.array([[float(by_path[p][f"prob_{name}"]) for name in sorted(CLASSES)] for p in val_paths])
    np.testing.assert_allclose(written, probs, rtol=0, atol=PROBABILITY_TOLERANCE)
    latest, _ = evaluate_checkpoint(out / f"fold_{fold}" / "checkpoint_latest.pth", root / "data", val_paths)
    assert latest["accuracy"] == history[-1]["accuracy"]


def test_run_without_cv_is_one_holdout_split(holdout_run):
    root, out, _ = holdout_run
    folds = read(out / "folds.json")
    summary = read(out / "cv_summary.json")
    assert folds["mode"] == "holdout" and len(folds["folds"]) == 1
    assert summary["mode"] == "holdout" and summary["n_splits"] == 1 and len(summary["folds"]) == 1
    val = folds["folds"][0]["val"]
    assert len(val) == 5  # ceil(0.2 * 24), at least one image of each class
    assert {path.split("/")[0] for path in val} == set(CLASSES)
    for name in ("checkpoint_best.pth", "checkpoint_latest.pth", "history.json"):
        assert (out / "fold_1" / name).is_file()
    assert not (out / "fold_2").exists()
    assert "Cross-validation is off" in (out / "logs" / "run.log").read_text(encoding="utf-8")
    metrics, _ = evaluate_checkpoint(out / "fold_1" / "checkpoint_best.pth", root / "data", val)
    assert metrics["accuracy"] == summary["folds"][0]["metrics"]["accuracy"]


def test_overwrite_clears_old_results_but_keeps_the_running_log_and_what_is_not_a_run_file(tmp_path):
    out = tmp_path / "out"
    for old in ("cv_summary.json", "fold_1/history.json", "plots/roc.png", "logs/old.log", "logs/run.log"):
        (out / old).parent.mkdir(parents=True, exist_ok=True)
        (out / old).write_text("old", encoding="utf-8")
    RunDir(out).clear(keep=(out / "logs" / "run.log").resolve())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["logs/old.log",
                                                                                            "logs/run.log"]
