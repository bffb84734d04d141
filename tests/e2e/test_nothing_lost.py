"""Nothing lost, ever (issue 15): the mistakes real users make, and proof that no file was harmed.

Each test takes checksums of the data, of unrelated files and of an earlier finished run, makes
the mistake, and asserts the one-line message, the exit status and identical checksums after.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import predict
import train_clip
import training.fold
from tests.conftest import ROOT
from tests.helpers import make_image_tree
from utils.checksums import save_recorded
from utils.run_dir import LOCK_FILE, RunDir



def checksums(root: Path) -> dict[str, str]:
    """Every file below ``root`` (the run lock excluded: it is bookkeeping) → its SHA-256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def train_args(data: Path, out: Path, log: Path, text_encoder: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--output-dir", str(out), "--log-file", str(log),
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{text_encoder}", "--img-size", "16",
            "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--use-cv", "--n-splits", "2", *extra]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if " WARNING " not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path) -> tuple[Path, Path]:
    """(data folder, finished 2-fold run folder), trained once for the module."""
    base = tmp_path_factory.mktemp("finished")
    data = make_image_tree(base / "data", {"a": 6, "b": 6})
    out = base / "run"
    assert train_clip.main(train_args(data, out, base / "run.log", tiny_text_encoder)) == 0
    return data, out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: the data set and an unrelated file next to it."""
    make_image_tree(tmp_path / "P" / "mydata", {"a": 6, "b": 6})
    (tmp_path / "P" / "notes.txt").write_text("my notes", encoding="utf-8")
    return tmp_path / "P"


# 1. --overwrite deleted the user's data -----------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_an_output_folder_holding_the_data_is_refused(project, tmp_path, tiny_text_encoder, capsys, extra):
    before = checksums(project)
    code = train_clip.main(train_args(project / "mydata", project, tmp_path / "l.log", tiny_text_encoder, *extra))
    assert code == 2
    assert "holds the data" in one_line_error(capsys)
    assert checksums(project) == before and not (project / LOCK_FILE).exists()


def test_output_dir_dot_in_a_project_folder_is_refused(project, tmp_path, tiny_text_encoder, capsys,
                                                       monkeypatch):
    monkeypatch.chdir(project)
    before = checksums(project)
    code = train_clip.main(train_args(Path("mydata"), Path("."), tmp_path / "l.log", tiny_text_encoder,
                                      "--overwrite"))
    assert code == 2 and "holds the data" in one_line_error(capsys)
    assert checksums(project) == before


def test_overwrite_deletes_the_run_files_only(finished_run, tmp_path, tiny_text_encoder, capsys):
    data, source = finished_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / "fold_1" / "my_notes.txt").write_text("mine", encoding="utf-8")
    before = checksums(out)
    code = train_clip.main(train_args(data, out, tmp_path / "l.log", tiny_text_encoder, "--overwrite"))
    assert code == 2
    assert "fold_1/my_notes.txt" in one_line_error(capsys)
    assert checksums(out) == before
    (out / "fold_1" / "my_notes.txt").unlink()
    stale = out / "fold_7" / "history.json"  # a fold this run no longer plans: still the run's own file
    stale.parent.mkdir()
    stale.write_text("[]", encoding="utf-8")
    assert train_clip.main(train_args(data, out, tmp_path / "l.log", tiny_text_encoder, "--overwrite")) == 0
    assert not stale.parent.exists() and RunDir(out).is_finished()


# 2. Two trainings into one folder ------------------------------------------------------------
def test_two_trainings_started_together_never_mix(finished_run, tmp_path, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    (tmp_path / "notes.txt").write_text("next to the runs", encoding="utf-8")
    untouched = {"data": checksums(data), "earlier run": checksums(finished_run[1]),
                 "notes": checksums(tmp_path)["notes.txt"]}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # The second starts at once, while the first checks its inputs, while it holds the lock, and later:
    # both refusals ("in use", "already holds results") and the race for the lock itself.
    for round_, delay in enumerate((0.0, 0.2, 0.5, 1.0, 1.5)):
        out = tmp_path / f"run_{round_}"
        processes = []
        for lr in ("1e-3", "5e-4"):
            args = train_args(data, out, tmp_path / f"{round_}_{lr}.log", tiny_text_encoder, "--learning-rate", lr)
            processes.append(subprocess.Popen([sys.executable, str(ROOT / "train_clip.py"), *args], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            time.sleep(delay)
        results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], (round_, results)
        refusal = next(err for code, err in results if code == 2)
        assert "is in use by process" in refusal or "already holds results" in refusal, refusal
        assert_consistent(out)
    assert untouched == {"data": checksums(data), "earlier run": checksums(finished_run[1]),
                         "notes": checksums(tmp_path)["notes.txt"]}


def assert_consistent(out: Path) -> None:
    """config, checkpoints, fold results, summary and out-of-fold file all come from one run."""
    run = RunDir(out)
    config = json.loads(run.config.read_text(encoding="utf-8"))
    summary = json.loads(run.summary.read_text(encoding="utf-8"))
    for fold in summary["folds"]:
        result = json.loads(run.fold_result(fold["fold"]).read_text(encoding="utf-8"))
        assert result["metrics"] == fold["metrics"]
        for checkpoint in (run.best_checkpoint(fold["fold"]), run.latest_checkpoint(fold["fold"])):
            assert torch.load(checkpoint, weights_only=True)["config"] == config
    with run.oof_predictions.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = sum(r["true_class"] == r["predicted_class"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(summary["oof"]["accuracy"])


def test_a_locked_folder_is_refused_naming_its_holder_and_a_dead_holder_is_taken_over(finished_run, tmp_path,
                                                                                     tiny_text_encoder, capsys):
    data, _ = finished_run
    out = tmp_path / "run"
    with RunDir(out).lock():
        code = train_clip.main(train_args(data, out, tmp_path / "l.log", tiny_text_encoder))
        assert code == 2
        assert f"is in use by process {os.getpid()}" in one_line_error(capsys)
    # A holder that died without releasing: its details stay in the file, the OS lock is gone.
    out.mkdir(exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps({"host": "ward-pc", "pid": 999999, "started": "yesterday"}))
    assert train_clip.main(train_args(data, out, tmp_path / "l2.log", tiny_text_encoder)) == 0
    assert "Taking over" in capsys.readouterr().err and RunDir(out).is_finished()
    assert (out / LOCK_FILE).read_text() == ""  # released cleanly


# 3. Run outputs become a class ---------------------------------------------------------------
def test_an_output_folder_inside_the_data_is_refused(project, tmp_path, tiny_text_encoder, capsys):
    before = checksums(project)
    code = train_clip.main(train_args(project / "mydata", project / "mydata" / "runs", tmp_path / "l.log",
                                      tiny_text_encoder))
    assert code == 2 and "is inside --data-dir" in one_line_error(capsys)
    assert checksums(project) == before and not (project / "mydata" / "runs").exists()


def test_an_earlier_run_folder_inside_the_data_is_not_taken_for_a_class(finished_run, project, tmp_path,
                                                                        tiny_text_encoder, capsys):
    shutil.copytree(finished_run[1], project / "mydata" / "old_run")
    before = checksums(project)
    code = train_clip.main(train_args(project / "mydata", tmp_path / "out", tmp_path / "l.log", tiny_text_encoder))
    assert code == 2 and "old_run is a train_clip run folder, not a class" in one_line_error(capsys)
    assert checksums(project) == before


# 4. predict.py on an unfinished run ----------------------------------------------------------
@pytest.fixture
def unfinished_run(finished_run, tmp_path) -> Path:
    """As if killed in fold 1 of 2: no summary, no fold result, no fold 2."""
    out = tmp_path / "unfinished"
    shutil.copytree(finished_run[1], out)
    for path in (out / "cv_summary.json", out / "fold_1" / "result.json"):
        path.unlink()
    shutil.rmtree(out / "fold_2")
    return out


def test_predict_refuses_an_unfinished_run(finished_run, unfinished_run, tmp_path, capsys):
    before = checksums(unfinished_run)
    code = predict.main(["--run-dir", str(unfinished_run), "--images", str(finished_run[0]),
                         "--output", str(tmp_path / "p.csv")])
    assert code == 2
    line = one_line_error(capsys)
    assert "not a finished run" in line and "fold(s) 1, 2" in line and "--allow-unfinished" in line
    assert not (tmp_path / "p.csv").exists() and checksums(unfinished_run) == before


def test_predict_allow_unfinished_lists_the_folds_and_warns_about_an_untrained_model(finished_run, unfinished_run,
                                                                                     tmp_path, capsys):
    best = unfinished_run / "fold_1" / "checkpoint_best.pth"
    state = torch.load(best, weights_only=True)
    save_recorded(best, {**state, "epoch": 0})  # the untrained model was the best one (written as a run does)
    code = predict.main(["--run-dir", str(unfinished_run), "--images", str(finished_run[0]),
                         "--output", str(tmp_path / "p.csv"), "--allow-unfinished"])
    assert code == 0
    err = capsys.readouterr().err
    assert "is not a finished run" in err and "fold 1: checkpoint_best.pth (epoch 0)" in err
    assert "untrained" in err and (tmp_path / "p.csv").is_file()


# 5. Tracebacks instead of one line -----------------------------------------------------------
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_file_names_that_are_not_utf8_work_end_to_end(tmp_path, tiny_text_encoder, capsys):
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    odd = os.fsencode(data / "a") + b"/r\xf6ntgen.png"  # Latin-1 bytes, as old Windows shares write them
    shutil.copy(data / "a" / "img_000.png", os.fsdecode(odd))
    out = tmp_path / "run"
    assert train_clip.main(train_args(data, out, tmp_path / "l.log", tiny_text_encoder)) == 0
    assert "not valid UTF-8" in capsys.readouterr().err
    folds = json.loads((out / "folds.json").read_text(encoding="utf-8"))
    assert "a/r\\xf6ntgen.png" in [path for fold in folds["folds"] for path in fold["train"] + fold["val"]]
    assert "a/r\\xf6ntgen.png" in (out / "oof_predictions.csv").read_text(encoding="utf-8")
    assert (out / "report.md").is_file()
    assert predict.main(["--run-dir", str(out), "--images", str(data), "--output", str(tmp_path / "p.csv")]) == 0
    assert "a/r\\xf6ntgen.png" in (tmp_path / "p.csv").read_text(encoding="utf-8")


def test_log_file_naming_a_folder_is_one_line(finished_run, tmp_path, tiny_text_encoder, capsys):
    code = train_clip.main(train_args(finished_run[0], tmp_path / "out", tmp_path, tiny_text_encoder))
    assert code == 2 and "--log-file" in one_line_error(capsys) and not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line_before_the_model(finished_run, tmp_path,
                                                                          tiny_text_encoder, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(train_clip, "build_clip_model", lambda *a, **k: pytest.fail("model built"))
    code = train_clip.main(train_args(finished_run[0], blocker / "run", tmp_path / "l.log", tiny_text_encoder))
    assert code == 2 and "cannot be written" in one_line_error(capsys)


def test_a_permission_error_on_the_output_folder_is_one_line_before_the_model(finished_run, tmp_path,
                                                                             tiny_text_encoder, capsys,
                                                                             monkeypatch):
    # Root ignores file permissions, so the refusal of the OS is simulated where the folder is first written.
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(train_clip, "build_clip_model", lambda *a, **k: pytest.fail("model built"))
    code = train_clip.main(train_args(finished_run[0], tmp_path / "run", tmp_path / "l.log", tiny_text_encoder))
    assert code == 2 and "cannot be written: Permission denied" in one_line_error(capsys)


def test_predict_output_that_cannot_be_written_fails_before_predicting(finished_run, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(predict, "load_models", lambda *a, **k: pytest.fail("models loaded"))
    code = predict.main(["--run-dir", str(finished_run[1]), "--images", str(finished_run[0]),
                         "--output", str(blocker / "p.csv")])
    assert code == 2 and "--output" in one_line_error(capsys)


# 6. --resume on a finished run ---------------------------------------------------------------
def test_resume_on_a_finished_run_changes_nothing(finished_run, tmp_path, capsys):
    _, out = finished_run
    before = checksums(out)
    assert train_clip.main(["--resume", "--output-dir", str(out), "--log-file", str(tmp_path / "r.log")]) == 0
    assert "is finished" in capsys.readouterr().err
    assert checksums(out) == before


def test_wall_time_adds_up_every_segment_of_an_interrupted_run(tmp_path, tiny_text_encoder, monkeypatch):
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    real_run_fold = training.fold.run_fold

    def interrupted_in_fold_2(run, fold):
        if fold.number == 2:
            raise KeyboardInterrupt
        return real_run_fold(run, fold)

    monkeypatch.setattr(train_clip, "run_fold", interrupted_in_fold_2)
    assert train_clip.main(train_args(data, out, tmp_path / "1.log", tiny_text_encoder)) == 130
    monkeypatch.undo()
    first = json.loads((out / "run_time.json").read_text())["segments"]
    assert len(first) == 1 and first[0]["seconds"] > 0
    assert train_clip.main(["--resume", "--output-dir", str(out), "--log-file", str(tmp_path / "2.log")]) == 0
    segments = json.loads((out / "run_time.json").read_text())["segments"]
    summary = json.loads((out / "cv_summary.json").read_text())
    assert len(segments) == 2 and segments[0] == first[0]
    assert summary["wall_time_s"] == pytest.approx(sum(s["seconds"] for s in segments), abs=0.06)


# 8. Class texts ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ('{"a": "first", "b": "bee", "a": "second"}', "the key 'a' appears twice"),
    ('{"a": "ay", "b": "bee", "  ": "blank"}', "a class name is empty or only spaces"),
])
def test_class_texts_with_a_repeated_or_blank_key_are_refused(finished_run, tmp_path, tiny_text_encoder, capsys,
                                                              text, expected):
    texts = tmp_path / "texts.json"
    texts.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    code = train_clip.main(train_args(finished_run[0], out, tmp_path / "l.log", tiny_text_encoder,
                                      "--class-texts-file", str(texts)))
    line = one_line_error(capsys)
    assert code == 2 and expected in line and str(texts) in line and not out.exists()
