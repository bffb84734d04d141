"""progress.json: the time-left estimate as a pure function of fake epoch times, the records written
and read back, and the run folder treating the file as bookkeeping (not results)."""
from __future__ import annotations

import datetime as dt
import math
import os
import socket
from pathlib import Path

import pytest

from utils.progress import (FailureRecord, Progress, TimeLeft, describe_time_left, epoch_progress, format_duration,
                            read_record, time_left, write_record)
from utils.run_dir import RunDir


def test_before_any_training_epoch_nothing_is_estimated() -> None:
    left = time_left([], epoch=0, epochs=10, folds_after=4)
    assert left == TimeLeft(None, None)
    assert describe_time_left(left) == "left: known after the first training epoch"


def test_each_epoch_left_takes_the_median_of_the_epochs_so_far() -> None:
    seconds = [10.0, 12.0, 14.0]  # median 12
    left = time_left(seconds, epoch=3, epochs=10, folds_after=2)
    assert left.fold == pytest.approx(7 * 12.0)  # 7 epochs of this fold left
    assert left.run == pytest.approx(7 * 12.0 + 2 * 10 * 12.0)  # and two whole folds after it
    assert describe_time_left(left) == "left: fold 1m 24s, run 5m 24s"


def test_a_slow_first_epoch_does_not_count_for_every_other_one() -> None:
    # A first epoch slowed by compilation or warm-up: the mean (107 s) would triple the estimate.
    left = time_left([300.0, 10.0, 11.0], epoch=3, epochs=5, folds_after=0)
    assert left.fold == pytest.approx(2 * 11.0) and left.run == left.fold


def test_the_last_epoch_of_a_fold_leaves_only_the_folds_after_it() -> None:
    left = time_left([20.0, 40.0], epoch=8, epochs=8, folds_after=1)  # median 30
    assert left.fold == 0.0 and left.run == pytest.approx(8 * 30.0)
    assert time_left([20.0], epoch=8, epochs=8, folds_after=0) == TimeLeft(0.0, 0.0)


def test_the_time_since_the_epoch_is_taken_off_and_never_below_zero() -> None:
    written = dt.datetime(2026, 12, 2, 3, 0, 0).astimezone()
    record = Progress("gpu0", 2, 5, 2, 13, 200, 100.0, 500.0, "job.log", "host", 1, written.isoformat())
    assert record.left_now(written + dt.timedelta(seconds=30)) == TimeLeft(70.0, 470.0)
    assert record.left_now(written + dt.timedelta(hours=1)) == TimeLeft(0.0, 0.0)
    unknown = Progress("gpu0", 1, 5, 1, 0, 200, None, None, None, "host", 1, written.isoformat())
    assert unknown.left_now(written) == TimeLeft(None, None)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (7, 125, 4000, math.nan)] == ["7s", "2m 05s", "1h 06m", "-"]


def test_records_are_read_back_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_CLIP_SLOT", "gpu3")
    path = tmp_path / "progress.json"
    from utils.progress import slot_of_this_process

    running = epoch_progress(slot_of_this_process("cuda:0"), 4, 5, 4, 7, 9, TimeLeft(1.5, 20.0), "l.log")
    write_record(path, running)
    assert read_record(path) == running
    assert (running.slot, running.pid, running.host) == ("gpu3", os.getpid(), socket.gethostname())
    monkeypatch.delenv("TRAIN_CLIP_SLOT")
    assert slot_of_this_process("cuda:1") == "cuda:1"  # started by hand: the trainer's device
    failed = FailureRecord("exit 2", "pretrained weights not found", "logs/x.log", "2026-12-02T03:00:00+00:00")
    write_record(path, failed)
    assert read_record(path) == failed


@pytest.mark.parametrize("text", [None, "not json", "[1, 2]", '{"state": "paused"}', '{"state": "failed"}',
                                  '{"state": "failed", "status": "exit 1", "reason": "", "log": null, '
                                  '"updated": "yesterday"}'])
def test_a_missing_or_foreign_record_reads_as_none(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "progress.json"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    assert read_record(path) is None


def test_a_folder_with_only_its_progress_record_holds_no_results(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    write_record(run_dir.progress, FailureRecord("exit 1", "boom", None, "2026-12-02T03:00:00+00:00"))
    assert run_dir.status() == "empty" and not run_dir.holds_results()
    assert run_dir.foreign_paths() == []  # the run's own file
    (run_dir.path / "config.json").write_text("{}", encoding="utf-8")
    assert run_dir.status() == "partial"
    run_dir.clear()  # --overwrite: the record goes with the rest
    assert not run_dir.progress.exists()
