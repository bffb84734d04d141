"""A long study on a real server (issue 24): full disks, preemption, silent corruption, right refusals.

Every run here is the same tiny 2-fold run; one uninterrupted run is the reference that each
interrupted, refused or damaged run must end up equal to, bit for bit: all are one process (or a
fork of it) on this machine with the same threads and shapes, so the same kernels sum in the same
order. The report (plots, gallery) is skipped: it is drawn from these results and tested elsewhere.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

import predict
import train_clip
import training.checkpoints
import training.fold
from export import __main__ as export_cli
from tests.disk_faults import fill_disk_after
from tests.helpers import make_image_tree
from training.ensemble import load_fold_model
from utils.checksums import ChangedCheckpointError
from utils.io import load_checkpoint, read_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_report")]


def run_args(data: Path, text_encoder: Path, out: Path, log: Path) -> list[str]:
    return ["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "starnet_s050",
            "--img-size", "32", "--epochs", "2", "--batch-size", "2", "--num-workers", "0", "--use-cv",
            "--n-splits", "2", "--learning-rate", "1e-3", "--augmentation", "standard", "--select-on", "fold",
            "--bootstrap-resamples", "0", "--output-dir", str(out), "--log-file", str(log)]


def resume_args(out: Path, log: Path) -> list[str]:
    return ["--resume", "--output-dir", str(out), "--log-file", str(log)]


def comparable(out: Path) -> dict:
    summary = json.loads((out / "cv_summary.json").read_text())
    return {key: summary[key] for key in ("folds", "mean", "std", "oof")}


def histories(out: Path) -> list[list[dict]]:
    bookkeeping = ("seconds", "train_seconds", "text_encoder_calls")  # of the process, not results
    return [[{k: v for k, v in row.items() if k not in bookkeeping} for row in read_json(p, "history")]
            for p in sorted(out.glob("fold_*/history.json"))]


def temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob("*.tmp"))


def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    logging.getLogger("train_clip").handlers.clear()
    lines = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line or line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def assert_every_file_whole(out: Path) -> None:
    for path in out.rglob("*.pth"):
        load_checkpoint(path)
    for path in out.rglob("*.json"):
        read_json(path, "run file")
    assert not temporaries(out)


@pytest.fixture(scope="module")
def no_report() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_clip, "write_reports", lambda run: None)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path, no_report) -> tuple[Path, Path]:
    """The data and the uninterrupted run."""
    base = tmp_path_factory.mktemp("reference")
    data = make_image_tree(base / "data", {"a": 4, "b": 4})
    assert train_clip.main(run_args(data, tiny_text_encoder, base / "run", base / "run.log")) == 0
    return data, base / "run"


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, reference, tiny_text_encoder: Path) -> Path:
    """The same run stopped (Ctrl-C) in fold 2's last epoch: fold 1 finished, fold 2 resumable."""
    data, _ = reference
    base = tmp_path_factory.mktemp("interrupted")
    real = training.fold.train_one_epoch

    def stop_in_fold_2(*args, description: str = "", **kwargs):
        if description.startswith("fold 2 epoch 2"):
            raise KeyboardInterrupt
        return real(*args, description=description, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.fold, "train_one_epoch", stop_in_fold_2)
        assert train_clip.main(run_args(data, tiny_text_encoder, base / "run", base / "run.log")) == 130
    assert "optimizer" in load_checkpoint(base / "run" / "fold_2" / "checkpoint_latest.pth")
    return base / "run"


def copy_run(source: Path, target: Path) -> Path:
    return shutil.copytree(source, target, copy_function=shutil.copy2)


def flip_byte_in_weights(path: Path) -> None:
    """One bit of one weight's bytes, in the middle of the file: it still loads, with another value."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


# -- a full disk ---------------------------------------------------------------------------------
def test_a_full_disk_at_a_write_is_one_line_every_file_stays_whole_and_resume_ends_equal(
        reference, tiny_text_encoder, tmp_path, monkeypatch, capsys):
    data, full = reference
    out = tmp_path / "run"
    left = fill_disk_after(monkeypatch, room=20_000_000)  # full during fold 1 (each checkpoint: 3 to 8 MB)
    assert train_clip.main(run_args(data, tiny_text_encoder, out, tmp_path / "1.log")) == 2
    message = last_error(capsys)
    assert "checkpoint_" in message and "is full (no space left on device" in message and "the file needs" in message
    assert "--checkpoint-dtype bfloat16" in message and "inline_container" not in message
    assert not (out / "cv_summary.json").exists()
    assert_every_file_whole(out)
    left[0] = 10 ** 12  # space freed
    assert train_clip.main(resume_args(out, tmp_path / "2.log")) == 0
    assert comparable(out) == comparable(full) and histories(out) == histories(full)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_small_real_file_system_stops_in_one_line_and_resume_on_more_space_ends_equal(
        reference, tiny_text_encoder, tmp_path, monkeypatch, capsys):
    data, full = reference
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        out = mount / "run"
        with monkeypatch.context() as patch:  # without the check before each fold, a write meets the full disk
            patch.setattr(training.checkpoints.FoldCheckpoints, "check_disk_space", lambda *args: None)
            assert train_clip.main(run_args(data, tiny_text_encoder, out, tmp_path / "1.log")) == 2
        message = last_error(capsys)
        assert f"the file system mounted on {mount} is full (no space left on device" in message
        assert_every_file_whole(out)
        # With the check, the fold that cannot fit is refused before it starts, naming what it needs.
        assert train_clip.main(resume_args(out, tmp_path / "2.log")) == 2
        message = last_error(capsys)
        assert "cannot start: the file system mounted on" in message and "checkpoints need about" in message
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        assert train_clip.main(resume_args(out, tmp_path / "3.log")) == 0
        assert comparable(out) == comparable(full) and histories(out) == histories(full)
        assert not temporaries(out)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# -- preemption ----------------------------------------------------------------------------------
def start_in_fork(argv: list[str]) -> int:
    """train_clip.main in a forked child (this process's imports and threads: no start-up cost)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            code = train_clip.main(argv)
        finally:
            os._exit(code)
    return pid


def epochs_written(out: Path) -> int:
    total = 0
    for path in out.glob("fold_*/history.json"):
        try:
            total += len(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    return total


def test_killed_at_random_moments_and_resumed_each_time_ends_equal_with_no_temporary_left(
        reference, tiny_text_encoder, tmp_path):
    data, full = reference
    out = tmp_path / "run"
    rng = random.Random(24)
    # Kill moments: after a random number of epochs written (spread over the run's 6), then a random
    # fraction of a second more (inside an epoch, a checkpoint's write, or a resumption's start).
    moments = sorted(rng.randint(0, 5) for _ in range(6))
    kills, finished = 0, 0
    for number, epochs in enumerate(moments):
        resuming = (out / "config.json").is_file()
        if resuming:  # what a kill inside a write leaves: every resumption must remove such files
            (out / f".cv_summary.json.{number:08x}.tmp").write_bytes(b"\0" * 4096)
        log = tmp_path / f"{number}.log"
        pid = start_in_fork(resume_args(out, log) if resuming else run_args(data, tiny_text_encoder, out, log))
        deadline = time.monotonic() + 120
        while not (ended := os.waitpid(pid, os.WNOHANG))[0] and epochs_written(out) < epochs \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if not ended[0]:
            time.sleep(rng.uniform(0.0, 0.4))
            ended = os.waitpid(pid, os.WNOHANG)
        if ended[0]:  # it finished before the kill
            assert os.waitstatus_to_exitcode(ended[1]) == 0
            finished = 1
            break
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
    assert kills >= 5, f"the run finished after {kills} kills"
    assert bool(finished) == (out / "cv_summary.json").is_file()  # a fast machine may finish the last attempt
    assert train_clip.main(resume_args(out, tmp_path / "final.log")) == 0
    assert comparable(out) == comparable(full) and histories(out) == histories(full)
    assert not temporaries(out)


def test_sigterm_stops_like_ctrl_c_removing_temporaries_and_releasing_the_lock(reference, tiny_text_encoder, tmp_path):
    data, _ = reference
    out = tmp_path / "run"
    pid = start_in_fork(run_args(data, tiny_text_encoder, out, tmp_path / "1.log"))
    deadline = time.monotonic() + 120
    while epochs_written(out) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    leftover = out / "fold_1" / ".checkpoint_best.pth.0badf00d.tmp"  # as if a write of this run was cut
    leftover.write_bytes(b"\0" * 4096)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130  # unwound, not killed by the signal
    assert not temporaries(out)
    assert (out / ".train_clip.lock").read_text() == ""  # released
    assert_every_file_whole(out)


# -- damaged checkpoints -------------------------------------------------------------------------
def test_a_truncated_latest_of_the_unfinished_fold_restarts_that_fold_with_one_warning(
        reference, interrupted, tmp_path, capsys):
    _, full = reference
    out = copy_run(interrupted, tmp_path / "run")
    latest = out / "fold_2" / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # an interrupted copy
    fold_1 = (out / "fold_1" / "checkpoint_best.pth").read_bytes()
    assert train_clip.main(resume_args(out, tmp_path / "r.log")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line and str(latest) in line]
    assert len(warnings) == 1 and "is incomplete" in warnings[0]
    assert "training fold 2 again from its start" in warnings[0]
    assert comparable(out) == comparable(full) and histories(out) == histories(full)
    assert (out / "fold_1" / "checkpoint_best.pth").read_bytes() == fold_1  # the finished fold is untouched


def test_a_changed_checkpoint_of_a_finished_fold_is_refused_on_resume_naming_it(interrupted, tmp_path, capsys):
    out = copy_run(interrupted, tmp_path / "run")
    best = out / "fold_1" / "checkpoint_best.pth"
    flip_byte_in_weights(best)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".train_clip.lock"}
    assert train_clip.main(resume_args(out, tmp_path / "r.log")) == 2
    message = last_error(capsys)
    assert f"{best} (the model fold 1 chose) changed since it was written" in message
    assert "copy it again" in message and "retrain fold 1" in message
    assert {p: p.read_bytes() for p in before} == before  # nothing written


def test_one_flipped_byte_is_refused_by_predict_and_the_model_loader_while_untouched_folds_load(
        reference, tmp_path, capsys):
    data, full = reference
    out = copy_run(full, tmp_path / "run")
    best = out / "fold_1" / "checkpoint_best.pth"
    flip_byte_in_weights(best)
    load_checkpoint(best)  # torch itself notices nothing
    assert predict.main(["--run-dir", str(out), "--images", str(data), "--output", str(tmp_path / "p.csv")]) == 2
    message = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")][-1]
    assert f"{best} (the model fold 1 chose) changed since it was written" in message
    # The gallery rebuilds fold models with the same loader (training.ensemble), and so does the export:
    with pytest.raises(ChangedCheckpointError, match="retrain fold 1"):
        load_fold_model(1, best, torch.device("cpu"))
    bundle = tmp_path / "bundle"
    assert export_cli.main([str(out), "--output", str(bundle), "--format", "onnx"]) == 2
    message = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")][-1]
    assert f"{best} (the model fold 1 chose) changed since it was written" in message
    assert not bundle.exists() or not any(bundle.iterdir())  # nothing exported
    for run, name in ((full, "a.csv"), (out, "b.csv")):
        assert predict.main(["--run-dir", str(run), "--images", str(data), "--output", str(tmp_path / name),
                             "--fold", "2"]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


# -- a refusal that was wrong ------------------------------------------------------------------------
def test_data_csv_with_the_output_folder_beside_it_trains_and_one_holding_a_listed_image_is_refused(
        reference, tiny_text_encoder, tmp_path, capsys):
    data, _ = reference
    project = tmp_path / "project"
    images = shutil.copytree(data, project / "images")
    rows = [f"images/{p.relative_to(images).as_posix()},{p.parent.name}" for p in sorted(images.rglob("*.png"))]
    (project / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")

    def csv_args(out: Path, log: str) -> list[str]:
        args = run_args(data, tiny_text_encoder, out, tmp_path / log)
        at = args.index("--data-dir")
        return args[:at] + ["--data-csv", str(project / "labels.csv")] + args[at + 2:] + ["--epochs", "1"]

    assert train_clip.main(csv_args(project / "runs" / "x", "1.log")) == 0
    assert (project / "runs" / "x" / "cv_summary.json").is_file()
    capsys.readouterr()
    assert train_clip.main(csv_args(images / "a", "2.log")) == 2
    assert f"--output-dir {images / 'a'} holds {images / 'a'}" in last_error(capsys)
    assert sorted(p.name for p in (images / "a").iterdir()) == sorted(p.name for p in (data / "a").iterdir())
