"""reporting/leaderboard.py on fabricated run folders: what counts as finished, ranking, the files."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from reporting import leaderboard
from reporting.run_entries import parse_summary
from reporting.tables import display_width
from utils.io import write_json
from utils.run_dir import RunDir
from tests.conftest import ROOT
from tests.helpers import INNER_SELECTION


def summary(bal_acc: float, auc: float | None = 0.9, n_splits: int = 2, n_folds: int | None = None,
            image: str = "resnet18", text: str = "clip:ViT-B/32", wall: float = 125.0) -> dict:
    metrics = {"accuracy": bal_acc + 0.01, "balanced_accuracy": bal_acc, "macro_f1": bal_acc - 0.01,
               "roc_auc": auc}
    std = {key: 0.02 for key in metrics}
    folds = [{"fold": k + 1, "best_epoch": 3, "metrics": metrics} for k in range(n_folds or n_splits)]
    return {"mode": "cv", "n_splits": n_splits, "monitor": "balanced_accuracy", "selection": INNER_SELECTION,
            "image_encoder": image,
            "text_encoder": text, "class_names": ["a", "b"], "folds": folds, "mean": metrics, "std": std,
            "oof": metrics, "wall_time_s": wall}


def write_run(root: Path, name: str, data: dict | None, fold_files: bool = True) -> Path:
    """A run folder as the trainer leaves it: planned folds, a result per finished fold, the summary
    (without ``fold_files``: the summary only, as trainers before fold result files left it)."""
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.config.write_text("{}", encoding="utf-8")
    if data is not None and fold_files:
        write_json(run.folds, {"folds": [{"fold": k} for k in range(1, data["n_splits"] + 1)]})
        for fold in data["folds"]:
            write_json(run.fold_result(fold["fold"]), fold)
    if data is not None:
        # null as the trainer writes an undefined metric; NaN as runs written before that did (allow_nan)
        run.summary.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return run.path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "runs 结果"
    write_run(root, "resnet18_clip_ViT-B_32", summary(0.80, image="resnet18"))
    write_run(root, "resnet50_bert-base-chinese", summary(0.90, auc=None, image="resnet50",
                                                          text="bert-base-chinese", wall=4000))
    write_run(root, "resnet34_股骨柄文本", summary(0.85, auc=math.nan, image="resnet34", text="股骨柄文本"))
    write_run(root, "resnet101_interrupted", None)
    write_run(root, "resnet152_torn", summary(0.99, n_splits=5, n_folds=3))
    (root / "not_a_run").mkdir()
    return root


def test_parse_summary_accepts_only_complete_summaries() -> None:
    assert parse_summary(summary(0.8), "r").mean["balanced_accuracy"] == 0.8
    assert parse_summary(summary(0.8, n_splits=5, n_folds=3), "r") is None  # folds missing
    broken = summary(0.8)
    del broken["mean"]["macro_f1"]
    assert parse_summary(broken, "r") is None
    wrong_type = summary(0.8)
    wrong_type["mean"]["accuracy"] = "0.8"
    assert parse_summary(wrong_type, "r") is None
    assert parse_summary([summary(0.8)], "r") is None
    assert math.isnan(parse_summary(summary(0.8, auc=None), "r").mean["roc_auc"])


def statuses(root: Path, *runs: str) -> dict[str, str]:
    return {name: RunDir(root / name).status() for name in runs}


def test_status_is_the_run_folders(study: Path) -> None:
    assert statuses(study, "resnet18_clip_ViT-B_32", "resnet101_interrupted", "resnet152_torn", "not_a_run",
                    "missing") == {
        "resnet18_clip_ViT-B_32": "complete", "resnet101_interrupted": "partial",
        "resnet152_torn": "partial",  # 3 of 5 planned folds
        "not_a_run": "empty", "missing": "empty"}
    (study / "resnet18_clip_ViT-B_32" / "cv_summary.json").write_text('{"mean": ', encoding="utf-8")
    assert statuses(study, "resnet18_clip_ViT-B_32") == {"resnet18_clip_ViT-B_32": "partial"}  # torn JSON


def test_a_summary_without_its_fold_results_is_not_finished(study: Path) -> None:
    write_run(study, "resnet18_summary_only", summary(0.7), fold_files=False)
    assert statuses(study, "resnet18_summary_only") == {"resnet18_summary_only": "partial"}


def test_a_finished_run_without_numbers_to_rank_is_listed_unranked(
        study: Path) -> None:
    broken = summary(0.95)
    del broken["mean"]["macro_f1"]
    write_run(study, "resnet200_old_summary", broken)
    assert statuses(study, "resnet200_old_summary") == {"resnet200_old_summary": "complete"}
    ranked, without = leaderboard.build_leaderboard(study)
    assert "resnet200_old_summary" not in [e.run for e in ranked] and "resnet200_old_summary" in without


def test_ranks_best_first_and_nan_last(study: Path) -> None:
    ranked, without = leaderboard.build_leaderboard(study)
    assert [e.run for e in ranked] == ["resnet50_bert-base-chinese", "resnet34_股骨柄文本",
                                       "resnet18_clip_ViT-B_32"]
    assert without == ["resnet101_interrupted", "resnet152_torn"]  # not_a_run has no config.json
    by_auc, _ = leaderboard.build_leaderboard(study, metric="roc_auc")
    assert [e.run for e in by_auc][0] == "resnet18_clip_ViT-B_32"  # the only AUC that is a number
    only, without = leaderboard.build_leaderboard(study, ["resnet18_clip_ViT-B_32", "never_ran"])
    assert [e.run for e in only] == ["resnet18_clip_ViT-B_32"] and without == ["never_ran"]


def test_cli_writes_csv_and_markdown(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert leaderboard.main([str(study)]) == 0
    printed = capsys.readouterr().out
    markdown = (study / "leaderboard.md").read_text(encoding="utf-8")
    assert printed == markdown
    assert "0.9000 ± 0.0200" in markdown and "1h 06m" in markdown and "n/a" in markdown
    assert "- resnet101_interrupted" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len({display_width(line) for line in table}) == 1  # columns line up, Chinese names too
    with open(study / "leaderboard.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["resnet50_bert-base-chinese", "resnet34_股骨柄文本",
                                        "resnet18_clip_ViT-B_32"]
    assert float(rows[0]["balanced_accuracy_mean"]) == 0.9 and float(rows[0]["balanced_accuracy_std"]) == 0.02
    assert rows[0]["rank"] == "1" and rows[0]["text_encoder"] == "bert-base-chinese"
    assert float(rows[2]["wall_time_s"]) == 125.0


def test_cli_rejects_unknown_metric(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert leaderboard.main(["--metric", "balanced_acuracy", str(study)]) == 2
    assert "did you mean 'balanced_accuracy'" in capsys.readouterr().err
    assert leaderboard.main([str(study / "missing")]) == 2
    error = capsys.readouterr().err
    assert "output root not found" in error and error.count("\n") == 1  # one line, no traceback


def test_runs_without_comparable_folds_are_named_under_the_table(study: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # These runs' folds.json list fold numbers only: no set of runs on the same folds, so no winner.
    assert leaderboard.main([str(study), "--bbc-resamples", "10"]) == 0
    markdown = capsys.readouterr().out
    assert "Runs left out of BBC-CV:" in markdown
    assert "- resnet18_clip_ViT-B_32: folds.json missing or unreadable" in markdown
    assert "is the best of" not in markdown
    with pytest.raises(SystemExit):
        leaderboard.main([str(study), "--bbc-resamples", "-1"])
    assert "--bbc-resamples must be 0 or more, got -1" in capsys.readouterr().err


def test_the_leaderboard_and_the_config_load_neither_numpy_nor_torch() -> None:
    # The study runner reads both before every study; every command parses its config first.
    probe = ("import sys, reporting.leaderboard, training.config; "
             "print(sorted({'numpy', 'torch', 'sklearn'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    assert result.stdout.strip() == "[]"
