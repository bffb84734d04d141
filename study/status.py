"""``bash run_train_clip.sh --status``: where each job of the study stands, read from its run folder.

Run from another terminal (or another node of the cluster) while a study runs: it reads the run
folders only (``RunDir``: the finished results, the lock's holder, ``progress.json``), starts
nothing and loads no torch. One line per job on stdout; the count on stderr.

- **done**: every fold and ``cv_summary.json`` written (and the run's wall time);
- **running**: a live process holds the folder; with its progress record, the GPU slot, fold f of
  F, epoch e of E and the time left (the estimate of its last epoch, less the time since);
- **failed**: the study runner saw its job fail (exit status, reason, log) and it has not run since;
- **waiting**: not started yet, or interrupted (it resumes when its turn comes).
"""
from __future__ import annotations

import datetime as dt
import socket
import sys
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from study.plan import Job
from study.settings import Settings
from utils.progress import FailureRecord, Progress, describe_time_left, format_duration, read_record
from utils.run_dir import RunDir
from utils.run_lock import describe

DONE, RUNNING, FAILED, WAITING = "done", "running", "failed", "waiting"


@dataclass(frozen=True)
class JobStatus:
    state: str  # DONE, RUNNING, FAILED or WAITING
    detail: str  # what follows the state on its line

    def line(self) -> str:
        return f"{self.state}{self.detail}"


def where(progress: Progress, this_host: str) -> str:
    return progress.slot if progress.host == this_host else f"{progress.slot} of {progress.host}"


def position(progress: Progress) -> str:
    return f"fold {progress.fold_index} of {progress.folds}, epoch {progress.epoch} of {progress.epochs}"


def running_status(progress: Progress | FailureRecord | None, holder: dict, now: dt.datetime,
                   this_host: str) -> JobStatus:
    # A record of the holder itself; one left by an earlier process is not where this one stands.
    if not (isinstance(progress, Progress) and progress.pid == holder.get("pid")
            and progress.host == holder.get("host")):
        return JobStatus(RUNNING, f" ({describe(holder)}): starting, no epoch finished yet")
    as_of = dt.datetime.fromisoformat(progress.updated).strftime("%H:%M:%S")
    return JobStatus(RUNNING, f" on {where(progress, this_host)}: {position(progress)}; "
                              f"{describe_time_left(progress.left_now(now))} (epoch ended {as_of})")


def job_status(run_dir: RunDir, now: dt.datetime, this_host: str) -> JobStatus:
    """What one job's run folder says about it (see the module's docstring)."""
    progress = read_record(run_dir.progress)
    holder = run_dir.lock_holder()
    if holder is not None:  # also a finished run being written out, or rerun (FORCE)
        return running_status(progress, holder, now, this_host)
    if run_dir.is_finished():
        return JobStatus(DONE, f" ({format_duration(run_dir.wall_time_s())})")
    if isinstance(progress, FailureRecord):
        return JobStatus(FAILED, f" ({progress.status}): {progress.reason}; log: {progress.log}")
    if isinstance(progress, Progress):
        return JobStatus(WAITING, f": interrupted after {position(progress)} (resumed when it runs again)")
    if run_dir.status() == "partial":
        return JobStatus(WAITING, ": interrupted before its first epoch (resumed when it runs again)")
    return JobStatus(WAITING, "")


def print_status(jobs: list[Job], settings: Settings, out: TextIO, now: dt.datetime | None = None) -> None:
    """One line per job on ``out`` (index, run folder name, status); the count on stderr, so that a
    script reading the job lines gets job lines only (as --list-jobs)."""
    now = now or dt.datetime.now().astimezone()
    this_host = socket.gethostname()
    statuses = [job_status(RunDir(settings.output_root / job.name), now, this_host) for job in jobs]
    width = max((len(job.name) for job in jobs), default=0)
    for index, (job, status) in enumerate(zip(jobs, statuses)):
        print(f"{index}  {job.name:<{width}}  {status.line()}", file=out)
    counts = Counter(status.state for status in statuses)
    print(f"{len(jobs)} job(s) in {settings.output_root}: "
          + ", ".join(f"{counts[state]} {state}" for state in (DONE, RUNNING, FAILED, WAITING)), file=sys.stderr)
