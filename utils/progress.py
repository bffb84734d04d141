"""Where a run stands, for a reader in another terminal: ``progress.json`` in the run folder.

The trainer (rank 0) writes it atomically after every epoch, while it holds the folder's lock: the
GPU slot, fold f of F, epoch e of E, and the time left for the fold and for the run. The study
runner writes it when a job fails (its exit status, the reason, its log). ``bash run_train_clip.sh
--status`` reads it (study/status.py); nothing else depends on it, so it is bookkeeping, like the
lock: a folder holding only it holds no results (:func:`utils.run_dir.is_bookkeeping_name`).

The estimate (:func:`time_left`): every epoch left takes as long as the median of the training
epochs so far (epoch 1 on, validation and checkpoints included; the median, so that a first epoch
slowed by warm-up or compilation does not count for every other one). The fold has E - e epochs
left; each fold after it E more. The zero-shot epoch 0 of the folds left (an evaluation) and early
stopping (``--patience``) are not foreseen: with early stopping the estimate is the most it takes.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from utils.io import write_json

# The study runner names each job's slot here (gpu0, gpu0+1, cpu); a trainer started by hand has none.
SLOT_VARIABLE = "TRAIN_CLIP_SLOT"
RUNNING, FAILED = "running", "failed"


@dataclass(frozen=True)
class TimeLeft:
    """Seconds left for the fold and for the run; None before any training epoch was timed."""

    fold: float | None
    run: float | None


def time_left(epoch_seconds: Sequence[float], epoch: int, epochs: int, folds_after: int) -> TimeLeft:
    """After ``epoch`` of ``epochs`` of a fold with ``folds_after`` folds still to train after it,
    given the seconds of the training epochs so far (see the module's docstring for the rule)."""
    if not epoch_seconds:
        return TimeLeft(None, None)
    per_epoch = statistics.median(epoch_seconds)
    fold = max(0, epochs - epoch) * per_epoch
    return TimeLeft(fold, fold + folds_after * epochs * per_epoch)


def format_duration(seconds: float) -> str:
    """``1h 02m``, ``4m 05s``, ``7s``; ``-`` for NaN."""
    if math.isnan(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def describe_time_left(left: TimeLeft) -> str:
    if left.fold is None or left.run is None:
        return "left: known after the first training epoch"
    return f"left: fold {format_duration(left.fold)}, run {format_duration(left.run)}"


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class Progress:
    """A running training's last epoch (``state`` running)."""

    slot: str
    fold: int
    folds: int  # how many folds the run has
    fold_index: int  # 1-based place of ``fold`` among them
    epoch: int
    epochs: int
    fold_left_s: float | None
    run_left_s: float | None
    log: str | None
    host: str
    pid: int
    updated: str
    state: str = RUNNING

    def left_now(self, now: dt.datetime) -> TimeLeft:
        """The estimate less the time since it was written (never below zero)."""
        if self.fold_left_s is None or self.run_left_s is None:
            return TimeLeft(None, None)
        since = max(0.0, (now - dt.datetime.fromisoformat(self.updated)).total_seconds())
        return TimeLeft(max(0.0, self.fold_left_s - since), max(0.0, self.run_left_s - since))


@dataclass(frozen=True)
class FailureRecord:
    """A job the study runner saw fail (``state`` failed)."""

    status: str  # "exit 1", "killed by signal 9"
    reason: str
    log: str | None
    updated: str
    state: str = FAILED


def epoch_progress(slot: str, fold: int, folds: int, fold_index: int, epoch: int, epochs: int, left: TimeLeft,
                   log: str | None) -> Progress:
    """This process's progress record, now."""
    return Progress(slot, fold, folds, fold_index, epoch, epochs, left.fold, left.run, log, socket.gethostname(),
                    os.getpid(), now_iso())


def slot_of_this_process(device: str) -> str:
    """The study runner's slot for this job, else the device the trainer chose (``cuda:1``, ``cpu``)."""
    return os.environ.get(SLOT_VARIABLE) or device


def write_record(path: Path, record: Progress | FailureRecord) -> None:
    write_json(path, asdict(record))


def read_record(path: Path) -> Progress | FailureRecord | None:
    """The record in ``path`` (a run folder's ``progress.json``); None when it is missing, unreadable
    or of another shape."""
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    kind = {RUNNING: Progress, FAILED: FailureRecord}.get(document.get("state"))
    if kind is None:
        return None
    try:
        record = kind(**document)
        dt.datetime.fromisoformat(record.updated)
    except (TypeError, ValueError):
        return None
    return record
