"""The study's winner, honestly: BBC-CV and the held-out test score on the leaderboard of a study.

The run folders are written by the trainer's own code (folds from ``training.run``, the summary and
``oof_predictions.csv`` by ``training.results.summarise``) from probabilities drawn at random instead of
trained models: every run knows nothing, so any score above chance is the study's luck. Only
``test_metrics.json`` is written here, as ``evaluate_test_ensemble`` writes it (that needs models).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data.folder import ImageFolder, scan_image_folder
from data.groups import assign_groups
from reporting import leaderboard, study_winner
from reporting.metrics import classification_metrics
from tests.helpers import make_image_tree
from training.arguments import config_from_args
from training.config import TrainConfig
from training.fold import FoldResult
from training.results import summarise
from training.run import Run, folds_document, plan_folds, split_off_test
from utils.io import write_json
from utils.run_dir import RunDir

METRIC = "balanced_accuracy"
CHANCE = 0.5  # two classes
PATIENT = r"^(\w+/img_\d\d)"  # 10 images per patient: a/img_000 .. a/img_009 are patient a/img_00


@dataclass
class NoiseRun:
    """What ``training.results.summarise`` reads of a :class:`training.run.Run`, without a model."""

    cfg: TrainConfig
    run_dir: RunDir
    images: ImageFolder
    device: str = "cpu"
    amp_dtype: Any = None

    labels = Run.labels
    display_path = Run.display_path


@dataclass(frozen=True)
class Study:
    root: Path
    test_probs: dict[str, np.ndarray]  # each run's test-set probabilities
    test_labels: np.ndarray


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.dirichlet([1.0, 1.0], size=n)


def write_noise_run(root: Path, name: str, data: Path, rng: np.random.Generator,
                    select_on: str = "last", n_splits: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A finished run folder of random predictions; returns the test set's labels and probabilities."""
    cfg = config_from_args(["--data-dir", str(data), "--use-cv", "--n-splits", str(n_splits), "--test-fraction", "0.2",
                            "--group-regex", PATIENT, "--bootstrap-resamples", "0", "--batch-size", "8",
                            "--select-on", select_on,  # random predictions: no inner split is planned
                            "--image-encoder", "resnet18", "--text-encoder", "clip:ViT-B/32",
                            "--output-dir", str(root / name)])
    images = assign_groups(scan_image_folder(data), cfg.groups_file, cfg.group_regex, cfg.group_by)
    dev_idx, test_idx = split_off_test(cfg, images)
    folds = plan_folds(cfg, images, dev_idx)
    run = NoiseRun(cfg, RunDir(root / name), images)
    run.run_dir.path.mkdir(parents=True)
    write_json(run.run_dir.config, cfg.to_dict())
    write_json(run.run_dir.folds, folds_document(cfg, images, folds, test_idx))
    results = []
    for fold in folds:
        probs = noise(rng, len(fold.val_idx))
        metrics = classification_metrics(np.asarray(images.labels)[fold.val_idx], probs)
        results.append(FoldResult(fold.number, 1, metrics, fold.val_idx, probs))
        write_json(run.run_dir.fold_result(fold.number), {"fold": fold.number, "best_epoch": 1, "metrics": metrics})
    summary = summarise(run, results)
    test_labels, test_probs = np.asarray(images.labels)[test_idx], noise(rng, len(test_idx))
    write_json(run.run_dir.test_metrics, {"n_images": len(test_idx), "ensemble_of_folds": [f.number for f in folds],
                                          "class_names": images.class_names,
                                          "metrics": classification_metrics(test_labels, test_probs)})
    summary["test"] = classification_metrics(test_labels, test_probs)
    summary["wall_time_s"] = 1.0
    write_json(run.run_dir.summary, summary)
    return test_labels, test_probs


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    base = tmp_path_factory.mktemp("noise_study")
    data = make_image_tree(base / "data", {"a": 60, "b": 60})
    rng = np.random.default_rng(11)
    root = base / "runs"
    test_probs = {}
    test_labels = None
    for r in range(8):
        select_on = "fold" if r == 0 else "last"
        test_labels, test_probs[f"noise_{r}"] = write_noise_run(root, f"noise_{r}", data, rng, select_on)
    return Study(root, test_probs, test_labels)


def test_the_top_rows_raw_cv_beats_chance_but_its_bbc_interval_holds_it(study: Study) -> None:
    ranked, without = leaderboard.build_leaderboard(study.root, metric=METRIC)
    assert not without and len(ranked) == 8
    top = ranked[0]
    assert top.mean[METRIC] > CHANCE  # the best of 8 coins
    winners, ungrouped = study_winner.find_winners(study.root, ranked, METRIC, n_resamples=500)
    assert not ungrouped
    [winner] = winners  # every run on the same folds: one winner, chosen from all of them
    assert winner.run == top.run and sorted(winner.chosen_from) == sorted(e.run for e in ranked)
    assert winner.bbc.n_runs == 8 and winner.bbc.resampled_unit == "group"  # the patients of folds.json
    assert winner.bbc.low < CHANCE < winner.bbc.high
    assert winner.bbc.estimate < top.mean[METRIC]


def test_the_winners_test_score_is_its_own_and_the_one_to_publish(study: Study) -> None:
    ranked, without = leaderboard.build_leaderboard(study.root, metric=METRIC)
    text = leaderboard.write_leaderboard(study.root, ranked, METRIC, without, bbc_resamples=200)
    top = ranked[0].run
    expected = classification_metrics(study.test_labels, study.test_probs[top])[METRIC]
    [winner], _ = study_winner.find_winners(study.root, ranked, METRIC, n_resamples=0)
    assert winner.test_score == pytest.approx(expected, rel=1e-12)
    assert f"Held-out test set: balanced accuracy {expected:.4f}" in text and "the number to publish" in text
    assert text.count("Held-out test set") == 1  # the winner's only: no choice among test scores
    with open(study.root / "leaderboard.csv", encoding="utf-8", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert float(rows[top][f"test_{METRIC}"]) == pytest.approx(expected, rel=1e-12)
    assert [name for name, row in rows.items() if row[f"test_{METRIC}"]] == [top]
    assert float(rows[top]["bbc_ci_low"]) < CHANCE < float(rows[top]["bbc_ci_high"])
    assert rows[top]["bbc_chosen_from"] == "8"


def test_a_run_selected_on_the_scored_fold_is_labelled_and_the_others_are_not(study: Study) -> None:
    ranked, without = leaderboard.build_leaderboard(study.root, metric=METRIC)
    text = leaderboard.write_leaderboard(study.root, ranked, METRIC, without, bbc_resamples=0)
    labelled = [line for line in text.splitlines() if line.startswith("|") and leaderboard.OPTIMISTIC_NOTE in line]
    assert len(labelled) == 1 and "| noise_0 " in labelled[0]
    with open(study.root / "leaderboard.csv", encoding="utf-8", newline="") as handle:
        optimistic = {row["run"]: row["optimistic"] for row in csv.DictReader(handle)}
    assert optimistic["noise_0"] == "true" and {optimistic[f"noise_{r}"] for r in range(1, 8)} == {"false"}


def test_runs_on_other_folds_or_without_predictions_are_left_out_saying_why(tmp_path: Path) -> None:
    data = make_image_tree(tmp_path / "data", {"a": 40, "b": 40})
    rng = np.random.default_rng(3)
    root = tmp_path / "runs"
    for r in range(3):
        write_noise_run(root, f"noise_{r}", data, rng)
    write_noise_run(root, "other_folds", data, rng, n_splits=2)
    ranked, _ = leaderboard.build_leaderboard(root, metric=METRIC)
    same = [e.run for e in ranked if e.run != "other_folds"]
    RunDir(root / same[1]).oof_predictions.unlink()
    winners, ungrouped = study_winner.find_winners(root, ranked, METRIC, n_resamples=50)
    assert not ungrouped
    by_run = {w.run: w for w in winners}
    assert set(by_run) == {same[0], "other_folds"}  # one winner per set of folds
    assert by_run[same[0]].chosen_from == (same[0], same[2]) and by_run[same[0]].bbc.n_runs == 2
    assert any(note.startswith(f"{same[1]} left out: out-of-fold predictions not found")
               for note in by_run[same[0]].notes)
    assert by_run["other_folds"].bbc.n_runs == 1
    RunDir(root / same[0]).oof_predictions.unlink()  # the winner's own: no BBC-CV, and no other run crowned
    [winner] = [w for w in study_winner.find_winners(root, ranked, METRIC, n_resamples=50)[0] if w.run == same[0]]
    assert winner.bbc is None and "BBC-CV not computed" in winner.notes[-1]
    text = leaderboard.format_leaderboard(ranked, METRIC, winners=[winner])
    assert "BBC-CV not computed" in text
    assert [line for line in text.splitlines() if f"| {same[0]} " in line][0].rstrip(" |").endswith("n/a")
