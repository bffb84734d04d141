"""--status on constructed run folders: done, running (with and without its progress record), failed
and waiting (new, or interrupted); job lines on stdout, the count on stderr. A real training writing
the progress that --status reads: tests/e2e/test_driver.py."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import socket
from pathlib import Path

import pytest

from study.__main__ import main
from study.status import job_status
from utils.io import write_json
from utils.progress import FailureRecord, TimeLeft, epoch_progress, write_record
from utils.run_dir import RunDir

NOW = dt.datetime(2026, 12, 2, 3, 0, 0).astimezone()
HOST = "this-host"


def finished_run(run_dir: RunDir, seconds: float) -> None:
    write_json(run_dir.folds, {"folds": [{"fold": 1}, {"fold": 2}]})
    for fold in (1, 2):
        write_json(run_dir.fold_result(fold), {"fold": fold})
    write_json(run_dir.summary, {"n_splits": 2})
    write_json(run_dir.run_time, {"segments": [{"started": "x", "seconds": seconds}]})


def progress_at(run_dir: RunDir, written: dt.datetime, left: TimeLeft, **changes) -> None:
    record = epoch_progress("gpu1", 2, 5, 2, 13, 200, left, "logs/job.log")
    write_record(run_dir.progress, dataclasses.replace(record, updated=written.isoformat(), **changes))


def status_of(run_dir: RunDir, host: str = HOST) -> str:
    return job_status(run_dir, NOW, host).line()


def test_a_finished_run_is_done_with_its_wall_time(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    finished_run(run_dir, 3725.0)
    assert status_of(run_dir) == "done (1h 02m)"


def test_a_running_job_tells_its_gpu_fold_epoch_and_time_left(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    with run_dir.lock():
        assert status_of(run_dir).startswith("running (process ") and status_of(run_dir).endswith(
            "starting, no epoch finished yet")
        # the last epoch ended 30 s ago with 10 min left for the fold and 2 h for the run
        progress_at(run_dir, NOW - dt.timedelta(seconds=30), TimeLeft(600.0, 7200.0))
        expected = ("running on gpu1: fold 2 of 5, epoch 13 of 200; left: fold 9m 30s, run 1h 59m "
                    f"(epoch ended {(NOW - dt.timedelta(seconds=30)):%H:%M:%S})")
        assert job_status(run_dir, NOW, socket.gethostname()).line() == expected
        # seen from another node of the cluster: which host the GPU is on
        assert f"running on gpu1 of {socket.gethostname()}: fold 2 of 5" in status_of(run_dir, "login-node")
        # a record an earlier process left is not where the holder stands
        progress_at(run_dir, NOW, TimeLeft(600.0, 7200.0), pid=1)
        assert status_of(run_dir).endswith("starting, no epoch finished yet")


def test_a_failed_job_names_its_status_reason_and_log(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    write_record(run_dir.progress, FailureRecord("exit 2", "pretrained weights not found", "logs/bad_gpu0.log",
                                                 NOW.isoformat()))
    assert status_of(run_dir) == "failed (exit 2): pretrained weights not found; log: logs/bad_gpu0.log"


def test_jobs_not_started_or_interrupted_are_waiting(tmp_path: Path) -> None:
    assert status_of(RunDir(tmp_path / "new")) == "waiting"
    interrupted = RunDir(tmp_path / "interrupted")
    progress_at(interrupted, NOW, TimeLeft(1.0, 2.0))  # its process is gone: nobody holds the folder
    assert status_of(interrupted) == ("waiting: interrupted after fold 2 of 5, epoch 13 of 200 "
                                      "(resumed when it runs again)")
    early = RunDir(tmp_path / "early")
    write_json(early.config, {})
    assert status_of(early) == "waiting: interrupted before its first epoch (resumed when it runs again)"


def test_status_prints_one_line_per_job_and_the_count_on_stderr(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "runs"
    finished_run(RunDir(root / "resnet18_clip_ViT-B_32"), 65.0)
    write_record(RunDir(root / "resnet34_clip_ViT-B_32").progress,
                 FailureRecord("killed by signal 9", "no error message", "l.log", NOW.isoformat()))
    out = io.StringIO()
    environ = {"IMAGE_ENCODERS": "resnet18 resnet34 resnet50", "TEXT_ENCODERS": "clip:ViT-B/32",
               "OUTPUT_ROOT": str(root)}
    assert main(["--status"], environ, out) == 0
    assert out.getvalue().splitlines() == [
        "0  resnet18_clip_ViT-B_32  done (1m 05s)",
        "1  resnet34_clip_ViT-B_32  failed (killed by signal 9): no error message; log: l.log",
        "2  resnet50_clip_ViT-B_32  waiting"]
    assert capsys.readouterr().err == f"3 job(s) in {root}: 1 done, 0 running, 1 failed, 1 waiting\n"
