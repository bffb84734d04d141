"""Runs that survive: kill and resume, refusal rules, atomic saves, determinism, faults (issue 6)."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_clip
import training.checkpoints
import training.engine
import training.fold
from reporting.metrics import mean_and_std
from tests.conftest import ROOT
from tests.helpers import make_image_tree
from utils.io import load_checkpoint, save_checkpoint, write_json



def base_args(data: Path, text_encoder: Path, epochs: int = 3) -> list[str]:
    return ["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "starnet_s050",
            "--img-size", "32", "--epochs", str(epochs), "--batch-size", "2", "--num-workers", "0",
            "--use-cv", "--n-splits", "2", "--learning-rate", "1e-3", "--augmentation", "standard",
            "--use-weighted-sampling"]


def comparable(summary: dict) -> dict:
    return {key: summary[key] for key in ("folds", "mean", "std", "oof")}


def histories_without_time(run_dir: Path, fold: int) -> list[dict]:
    rows = json.loads((run_dir / f"fold_{fold}" / "history.json").read_text())
    # Wall time and the text-tower call counter are bookkeeping of the process, not results.
    bookkeeping = ("seconds", "train_seconds", "text_encoder_calls")
    return [{k: v for k, v in row.items() if k not in bookkeeping} for row in rows]


def test_sigkill_in_fold_2_then_resume_matches_uninterrupted_run(tmp_path, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"a": 8, "b": 8, "c": 8})
    args = base_args(data, tiny_text_encoder, epochs=4)  # fold 2 has 3 epochs left when killed
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    script = [sys.executable, str(ROOT / "train_clip.py")]

    assert train_clip.main(args + ["--output-dir", str(tmp_path / "full"), "--log-file", str(tmp_path / "a.log")]) == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(script + args + ["--output-dir", str(killed), "--log-file", str(tmp_path / "b.log")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed / "fold_2" / "history.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            if len(json.loads(history.read_text())) >= 2:  # epoch 0 and epoch 1 of fold 2 are done
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed in fold 2"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "cv_summary.json").exists()
    assert (killed / "fold_1" / "result.json").exists()
    assert "optimizer" in load_checkpoint(killed / "fold_2" / "checkpoint_latest.pth")  # fold 2 can go on

    resumed = subprocess.run(script + ["--resume", "--output-dir", str(killed), "--log-file", str(tmp_path / "c.log")],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log_text = (tmp_path / "c.log").read_text()
    assert "Fold 1 finished earlier" in log_text and "Fold 2: resuming after epoch" in log_text

    full = json.loads((tmp_path / "full" / "cv_summary.json").read_text())
    again = json.loads((killed / "cv_summary.json").read_text())
    # Bit-identical, not close: both runs are one process on this machine with the same threads and
    # shapes, so the same kernels sum in the same order; resuming must change nothing of that.
    assert comparable(again) == comparable(full)
    assert histories_without_time(killed, 2) == histories_without_time(tmp_path / "full", 2)


def test_resume_after_a_stop_before_the_training_state_was_dropped_drops_it(tmp_path, tiny_text_encoder,
                                                                             monkeypatch):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "run"
    args = base_args(data, tiny_text_encoder, epochs=1) + ["--output-dir", str(out)]
    # As if the process had died right after each fold's result.json was written.
    monkeypatch.setattr(training.checkpoints.FoldCheckpoints, "drop_training_state", lambda self: None)
    assert train_clip.main(args + ["--log-file", str(tmp_path / "1.log")]) == 0
    assert "optimizer" in load_checkpoint(out / "fold_1" / "checkpoint_latest.pth")
    monkeypatch.undo()
    before = json.loads((out / "cv_summary.json").read_text())
    (out / "cv_summary.json").unlink()  # the process died before writing it

    assert train_clip.main(["--resume", "--output-dir", str(out), "--log-file", str(tmp_path / "2.log")]) == 0
    for fold in (1, 2):
        latest = load_checkpoint(out / f"fold_{fold}" / "checkpoint_latest.pth", ("model", "config"))
        assert not set(training.checkpoints.TRAINING_STATE_KEYS) & set(latest)
    assert comparable(json.loads((out / "cv_summary.json").read_text())) == comparable(before)


def test_resume_refuses_changed_settings_and_names_them(tmp_path, tiny_text_encoder, capsys):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "run"
    args = base_args(data, tiny_text_encoder, epochs=1) + ["--output-dir", str(out)]
    assert train_clip.main(args + ["--log-file", str(tmp_path / "1.log")]) == 0
    before = (out / "cv_summary.json").read_bytes()
    code = train_clip.main(["--resume", "--output-dir", str(out), "--learning-rate", "0.5", "--embed-dim", "16"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume refused" in err and "learning_rate" in err and "embed_dim" in err
    assert (out / "cv_summary.json").read_bytes() == before


def test_a_run_begun_before_inner_selection_resumes_with_select_on_fold_and_says_so(tmp_path, tiny_text_encoder,
                                                                                    capsys):
    """Its config.json has no select_on and its folds.json no inner split: resuming under the new
    default is refused with the way out, and --select-on fold resumes it as it was made."""
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "run"
    args = base_args(data, tiny_text_encoder, epochs=1) + ["--output-dir", str(out), "--select-on", "fold"]
    assert train_clip.main(args + ["--log-file", str(tmp_path / "1.log")]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["select_on"], config["inner_val_fraction"]  # as a run of the version before wrote it
    write_json(out / "config.json", config)
    summary = json.loads((out / "cv_summary.json").read_text())
    (out / "cv_summary.json").unlink()  # stopped before its last write: there is something to resume
    folds = (out / "folds.json").read_bytes()
    capsys.readouterr()
    assert train_clip.main(["--resume", "--output-dir", str(out), "--log-file", str(tmp_path / "2.log")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "has no inner selection split" in errors[0] and "--select-on fold" in errors[0]
    assert not (out / "cv_summary.json").exists() and (out / "folds.json").read_bytes() == folds
    assert train_clip.main(["--resume", "--output-dir", str(out), "--select-on", "fold",
                            "--log-file", str(tmp_path / "3.log")]) == 0
    assert comparable(json.loads((out / "cv_summary.json").read_text())) == comparable(summary)


def test_new_run_into_a_folder_of_someone_else_is_refused_even_with_overwrite(tmp_path, tiny_text_encoder,
                                                                              capsys):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    args = base_args(data, tiny_text_encoder, epochs=1) + ["--output-dir", str(out), "--log-file", str(tmp_path / "l.log")]
    for extra in ([], ["--overwrite"]):
        assert train_clip.main(args + extra) == 2
        err = capsys.readouterr().err
        assert "not a train_clip run's (notes.txt)" in err and len(err.strip().splitlines()) == 1
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_kill_between_write_and_replace_keeps_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(written) -> None:
        raise KeyboardInterrupt  # what a Ctrl-C (or a kill) at this moment would do

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)}, before_replace=crash)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]  # no temporary left behind


def test_deterministic_runs_give_identical_metrics(tmp_path, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    summaries = []
    for name in ("one", "two"):
        args = base_args(data, tiny_text_encoder, epochs=2) + [
            "--deterministic", "--output-dir", str(tmp_path / name), "--log-file", str(tmp_path / f"{name}.log")]
        assert train_clip.main(args) == 0
        summaries.append(json.loads((tmp_path / name / "cv_summary.json").read_text()))
    torch.use_deterministic_algorithms(False)
    assert comparable(summaries[0]) == comparable(summaries[1])  # same process, kernels, order: bit-identical


def test_patience_stops_a_fold_early(tmp_path, tiny_text_encoder, monkeypatch):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    # A learning rate of zero never improves on the zero-shot epoch: patience 2 stops after epoch 2.
    args = base_args(data, tiny_text_encoder, epochs=6) + [
        "--learning-rate", "1e-12", "--patience", "2", "--output-dir", str(tmp_path / "run"),
        "--log-file", str(tmp_path / "l.log")]
    assert train_clip.main(args) == 0
    epochs = [row["epoch"] for row in json.loads((tmp_path / "run" / "fold_1" / "history.json").read_text())]
    summary = json.loads((tmp_path / "run" / "cv_summary.json").read_text())
    best = summary["folds"][0]["best_epoch"]
    assert epochs == list(range(0, best + 3))
    assert "early stop" in (tmp_path / "l.log").read_text()


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tmp_path, tiny_text_encoder,
                                                                             monkeypatch, capsys):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    real_loss = training.engine.class_contrastive_loss
    calls = {"n": 0}

    def loss_turning_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss  # epoch 2, step 1 (1 step per epoch)

    monkeypatch.setattr(training.engine, "class_contrastive_loss", loss_turning_nan)
    out = tmp_path / "run"
    args = base_args(data, tiny_text_encoder, epochs=3) + ["--output-dir", str(out), "--log-file", str(tmp_path / "l.log")]
    assert train_clip.main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "epoch 2, step 1" in err
    latest = load_checkpoint(out / "fold_1" / "checkpoint_latest.pth")
    assert latest["epoch"] == 1


@pytest.mark.parametrize("bad_step", [3, 55])
def test_a_non_finite_loss_names_its_own_step_though_checked_every_fifty_steps(tiny_text_encoder, monkeypatch,
                                                                                bad_step):
    """The loss is read from the GPU every FINITE_CHECK_STEPS steps (and at the epoch's end), not at
    every step; the error still names the first bad step, and no later one."""
    from models.clip_model import build_clip_model
    from training.config import TrainConfig

    assert training.engine.FINITE_CHECK_STEPS == 50
    model = build_clip_model("starnet_s050", f"hf:{tiny_text_encoder}", 8, 0.07, [["a"], ["b"]], img_size=16)
    real_loss = training.engine.class_contrastive_loss
    calls = {"n": 0}

    def loss_turning_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("inf") if calls["n"] >= bad_step else loss  # then NaN weights, NaN losses

    monkeypatch.setattr(training.engine, "class_contrastive_loss", loss_turning_nan)
    batch = (torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), torch.arange(2))
    optimizer = training.engine.build_optimizer(model, TrainConfig())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(training.engine.TrainingError, match=f"at epoch 4, step {bad_step};"):
        training.engine.train_one_epoch(model, [batch] * 60, optimizer, scheduler, scaler, torch.device("cpu"),
                                        None, True, 4)
    assert calls["n"] == (50 if bad_step <= 50 else 60)  # found at the first check after it


def test_full_disk_while_saving_is_an_error_and_keeps_previous_checkpoint(tmp_path, tiny_text_encoder,
                                                                           monkeypatch, capsys):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    real_save = torch.save
    latest_saves = {"n": 0}

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save_until_disk_full(obj, handle, *args, **kwargs):
        if "optimizer" in obj and getattr(handle, "raw", None) is not None:  # checkpoint_latest.pth, to a file
            latest_saves["n"] += 1
            if latest_saves["n"] > 1:  # epoch 0's latest is written, then the disk is full at the write
                handle.raw = FullDisk()
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    out = tmp_path / "run"
    args = base_args(data, tiny_text_encoder, epochs=2) + ["--output-dir", str(out), "--log-file", str(tmp_path / "l.log")]
    assert train_clip.main(args) == 2
    err = capsys.readouterr().err
    assert "is full (no space left on device" in err and "checkpoint_latest.pth" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out / "fold_1" / "checkpoint_latest.pth")["epoch"] == 0
    assert not [p for p in (out / "fold_1").iterdir() if p.name.endswith(".tmp")]


def test_out_of_memory_probe_halves_until_a_batch_fits():
    tried = []

    def try_batch(size: int) -> None:
        tried.append(size)
        if size > 12:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert training.engine.largest_fitting_batch(try_batch, 64) == 8
    assert tried == [64, 32, 16, 8]
    assert training.engine.largest_fitting_batch(lambda n: (_ for _ in ()).throw(torch.OutOfMemoryError()), 4) == 0


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.pth", {"x": torch.ones(1)})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644  # readable by the lab, not only the owner


def test_undefined_metrics_are_strict_json_null_and_summarise_as_nan(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"folds": [{"roc_auc": float("nan")}, {"roc_auc": 0.75}], "range": (-math.inf, 0.5)})

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert data == {"folds": [{"roc_auc": None}, {"roc_auc": 0.75}], "range": [None, 0.5]}
    # A resumed run summarises folds read back from result.json as the uninterrupted one does.
    mean, std = mean_and_std(data["folds"])
    assert math.isnan(mean["roc_auc"]) and math.isnan(std["roc_auc"])


def test_out_of_memory_in_a_fold_names_the_batch_size_that_fits(tmp_path, tiny_text_encoder, monkeypatch, capsys):
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training.fold, "train_one_epoch", out_of_memory)
    args = base_args(data, tiny_text_encoder, epochs=1) + ["--output-dir", str(tmp_path / "run"),
                                                            "--log-file", str(tmp_path / "l.log"), "--batch-size", "4"]
    assert train_clip.main(args) == 2
    err = capsys.readouterr().err
    # The probe runs real forward/backward passes at half the batch size, which fit on the CPU.
    assert "out of memory at --batch-size 4" in err and "rerun with --batch-size 2" in err
