"""Issue 12, comparing runs: the corrected resampled t-test, same-folds checks, the leaderboard and
``python -m reporting.compare``."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from reporting import leaderboard
from reporting.compare import main as compare_main
from reporting.compare import paired_differences
from reporting.fold_comparison import corrected_resampled_t_test, why_not_comparable
from reporting.metrics import classification_metrics, mean_and_std, scalar_metrics
from utils.io import write_csv, write_json
from utils.run_dir import RunDir
from tests.helpers import INNER_SELECTION

CLASSES = ["a", "b"]


def test_corrected_t_test_matches_the_formula_worked_by_hand():
    # d = (0.01, 0.03, 0.05): mean 0.03, sample variance 0.0004. K = 3, n_test/n_train = 30/60, so the
    # variance is scaled by 1/3 + 1/2 = 5/6 and t^2 = 0.03^2 / (0.0004 * 5/6) = 2.7. With 2 degrees of
    # freedom the t distribution's CDF is 1/2 + t / (2 sqrt(2 + t^2)): p = 1 - sqrt(2.7 / 4.7).
    result = corrected_resampled_t_test([0.01, 0.03, 0.05], n_train=60, n_test=30)
    assert result.mean_difference == pytest.approx(0.03)
    assert result.t == pytest.approx(math.sqrt(2.7))
    assert result.dof == 2
    assert result.p_value == pytest.approx(1 - math.sqrt(2.7 / 4.7))
    # The plain paired t-test ignores the overlap of the training sets and is more confident.
    assert stats.ttest_1samp([0.01, 0.03, 0.05], 0).pvalue < result.p_value


def test_corrected_t_test_of_identical_runs_finds_nothing():
    result = corrected_resampled_t_test([0.0, 0.0, 0.0], 60, 30)
    assert (result.t, result.p_value) == (0.0, 1.0)


def folds_document(assignment: list[list[str]], files: list[str]) -> dict:
    return {"mode": "cv", "test": [], "folds": [{"fold": k + 1, "train": sorted(set(files) - set(val)),
                                                 "val": val} for k, val in enumerate(assignment)]}


FILES = [f"{c}/img_{i}.png" for c in CLASSES for i in range(6)]
FOLDS = [FILES[0::3], FILES[1::3], FILES[2::3]]


def test_runs_are_paired_only_on_the_same_folds():
    same = folds_document(FOLDS, FILES)
    assert why_not_comparable(same, folds_document([list(f) for f in FOLDS], FILES)) is None
    swapped = [FOLDS[0][:-1] + FOLDS[1][-1:], FOLDS[1][:-1] + FOLDS[0][-1:], FOLDS[2]]
    assert why_not_comparable(same, folds_document(swapped, FILES)) == "different fold assignment"
    other_files = [f.replace("img_0", "img_9") for f in FILES]
    assert why_not_comparable(same, folds_document([[f.replace("img_0", "img_9") for f in fold] for fold in FOLDS],
                                                   other_files)) == "different image files"
    assert why_not_comparable(same, folds_document([FILES[0::2], FILES[1::2]], FILES)) == \
        "different numbers of folds (3 vs 2)"
    assert why_not_comparable(same, None) == "folds.json missing or unreadable"


def fake_run(root: Path, name: str, assignment: list[list[str]], skill: float, seed: int,
             classes: list[str] = CLASSES) -> Path:
    """A finished run folder: folds.json, oof_predictions.csv and a cv_summary.json made from them."""
    rng = np.random.default_rng(seed)
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    write_json(run.folds, folds_document(assignment, FILES))
    y = np.array([CLASSES.index(f.split("/")[0]) for f in FILES])
    probs = rng.dirichlet([1, 1], len(FILES))
    probs[np.arange(len(y)), y] += skill
    probs /= probs.sum(axis=1, keepdims=True)
    fold_of = {f: k + 1 for k, fold in enumerate(assignment) for f in fold}
    write_csv(run.oof_predictions, ["path", "fold", "true_class", "predicted_class"] + [f"prob_{c}" for c in classes],
              [[f, fold_of[f], classes[t], classes[int(p.argmax())], *p] for f, t, p in zip(FILES, y, probs)])
    per_fold = [classification_metrics(y[[FILES.index(f) for f in fold]], probs[[FILES.index(f) for f in fold]])
                for fold in assignment]
    mean, std = mean_and_std([scalar_metrics(m) for m in per_fold])
    write_json(run.summary, {"mode": "cv", "n_splits": len(assignment), "monitor": "balanced_accuracy",
                             "selection": INNER_SELECTION,
                             "image_encoder": name, "text_encoder": "t", "class_names": classes,
                             "folds": [{"fold": k + 1, "best_epoch": 1, "metrics": m} for k, m in enumerate(per_fold)],
                             "mean": mean, "std": std, "oof": classification_metrics(y, probs), "wall_time_s": 1.0})
    return run.path


def test_leaderboard_compares_each_run_with_the_top_only_on_the_same_folds(tmp_path):
    swapped = [FOLDS[0][:-1] + FOLDS[1][-1:], FOLDS[1][:-1] + FOLDS[0][-1:], FOLDS[2]]
    fake_run(tmp_path, "best", FOLDS, skill=3.0, seed=1)
    fake_run(tmp_path, "same_folds", FOLDS, skill=0.3, seed=2)
    fake_run(tmp_path, "other_folds", swapped, skill=0.2, seed=3)
    ranked, _ = leaderboard.build_leaderboard(tmp_path, metric="accuracy")
    assert [e.run for e in ranked][0] == "best"
    text = leaderboard.write_leaderboard(tmp_path, ranked, "accuracy")
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and "rank" not in line}
    assert rows["best"][-3:-1] == ["—", "—"]  # the last column: BBC-CV
    assert rows["other_folds"][-3:-1] == ["n/a", "not compared: different fold assignment"]
    by_name = {e.run: e for e in ranked}
    expected = corrected_resampled_t_test(
        np.subtract(by_name["same_folds"].per_fold["accuracy"], by_name["best"].per_fold["accuracy"]),
        n_train=8, n_test=4)
    assert rows["same_folds"][-3:-1] == [f"{expected.mean_difference:+.4f}", f"{expected.p_value:.4f}"]
    # Each set of runs on the same folds has its winner: best of 2, and other_folds alone.
    assert rows["best"][-1].endswith("of 2 runs") and rows["other_folds"][-1].endswith("of 1 run")
    assert rows["same_folds"][-1] == "—"
    with open(tmp_path / "leaderboard.csv", encoding="utf-8", newline="") as handle:
        csv_rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert csv_rows["other_folds"]["not_compared_because"] == "different fold assignment"
    assert float(csv_rows["same_folds"]["p_value_vs_top"]) == pytest.approx(expected.p_value)


def test_paired_bootstrap_of_a_run_against_itself_is_exactly_zero():
    y = np.array([0, 1] * 20)
    probs = np.random.default_rng(0).dirichlet([1, 1], 40)
    for difference in paired_differences(y, probs, probs, n_resamples=200, seed=0):
        assert difference.difference == 0 and difference.interval == [0.0, 0.0]


def test_compare_command_prints_differences_with_intervals_and_the_t_test(tmp_path, capsys):
    a = fake_run(tmp_path, "good", FOLDS, skill=3.0, seed=1)
    b = fake_run(tmp_path, "weak", FOLDS, skill=0.1, seed=2)
    c = fake_run(tmp_path, "refolded", [FOLDS[1], FOLDS[0][:-1] + FOLDS[2][-1:], FOLDS[2][:-1] + FOLDS[0][-1:]],
                 skill=0.1, seed=2)
    assert compare_main([str(a), str(b), "--resamples", "300"]) == 0
    out = capsys.readouterr().out
    assert "12 shared out-of-fold images" in out and "300 resamples, seed 42" in out
    accuracy_row = next(line for line in out.splitlines() if line.startswith("accuracy"))
    cells = accuracy_row.split()
    difference, low, high = float(cells[3]), float(cells[4].strip("[,")), float(cells[5].strip("]"))
    assert low <= difference <= high and difference > 0
    assert "not done" not in out
    assert compare_main([str(a), str(c), "--resamples", "100"]) == 0
    assert "not done: different fold assignment" in capsys.readouterr().out


def test_compare_refuses_a_folder_without_a_run(tmp_path, capsys):
    a = fake_run(tmp_path, "good", FOLDS, skill=3.0, seed=1)
    assert compare_main([str(a), str(tmp_path / "nothing")]) == 2
    assert "not a finished train_clip run" in capsys.readouterr().err


def test_compare_refuses_runs_with_different_classes(tmp_path, capsys):
    a = fake_run(tmp_path, "good", FOLDS, skill=3.0, seed=1)
    b = fake_run(tmp_path, "renamed", FOLDS, skill=3.0, seed=1, classes=["a", "c"])
    assert compare_main([str(a), str(b)]) == 2
    assert "different classes" in capsys.readouterr().err
