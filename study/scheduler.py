"""Run jobs on slots: up to ``jobs_per_slot`` jobs per slot at a time, each in a process group of its own.

A slot is a GPU of GPUS (a group of them, or the CPU); JOBS_PER_GPU = K lets K jobs share it. Jobs
start in order, each on the least busy slot with room (the first of equals), so every slot gets a
job before any gets a second; the scheduler looks for finished ones every ``poll_seconds``. A job's own process group (its own
session) keeps Ctrl-C in the terminal from reaching it directly: on SIGINT, SIGTERM or SIGHUP the
scheduler stops every job's whole group (data-loader workers included), lists what was left
unfinished and reports the signal, so the caller exits 130, 143 or 129.

What a job runs is the caller's business (``Task.command``): the study builds train_clip.py
commands; the tests give a fake trainer.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

from utils.io import WriteError
from utils.progress import SLOT_VARIABLE, FailureRecord, format_duration, now_iso, write_record
from utils.run_dir import RunDir
from utils.run_lock import describe

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_SECONDS = 10.0  # after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class Slot:
    tag: str  # gpu0, gpu1, gpu0+1 or cpu: in the log names and the event lines
    gpu: int | None = None  # --gpu-id for its one-process jobs; None: the trainer's choice (the CPU)
    hide_cuda: bool = False  # DRIVER_FORCE_CPU: the job sees no CUDA device
    processes: int = 1  # more than one: a torchrun job, one process per GPU
    visible: str | None = None  # CUDA_VISIBLE_DEVICES for its jobs; None: the runner's own

    def environment(self) -> dict[str, str]:
        """What its jobs' environment changes: which GPUs they see."""
        if self.hide_cuda:
            return {"CUDA_VISIBLE_DEVICES": ""}
        return {} if self.visible is None else {"CUDA_VISIBLE_DEVICES": self.visible}


@dataclass(frozen=True)
class Task:
    name: str
    description: str  # what it does: "run", "resume the interrupted run", ...
    run_dir: Path
    command: Callable[[Slot, Path], list[str]]  # the argv for a slot and a log file
    rerun: bool = False  # FORCE: run it even when its folder holds a finished run


@dataclass(frozen=True)
class Failure:
    name: str
    status: str  # "exit 2", "killed by signal 9", "refused: ..."
    log: Path | None


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished by another process before their start
    stopped_by: int | None = None  # the signal that stopped the study


@dataclass
class Running:
    task: Task
    slot: Slot
    log: Path
    process: subprocess.Popen
    started: float
    place: int = 0  # the index of its slot (two slots may be equal: GPUS=(0 0))

    @property
    def console(self) -> Path:
        return console_path(self.log)


def log_path(log_dir: Path, name: str, slot: Slot) -> Path:
    """``<name>_<slot>_<YYYYmmdd_HHMMSS>.log``: one log per job and start."""
    return log_dir / f"{name}_{slot.tag}_{dt.datetime.now():%Y%m%d_%H%M%S}.log"


def console_path(log: Path) -> Path:
    return log.with_suffix(".console")


def event(out: TextIO, text: str) -> None:
    print(f"[{dt.datetime.now():%Y-%m-%d %H:%M:%S}] {text}", file=out, flush=True)


def describe_status(returncode: int) -> str:
    """Popen's return code as the shell would tell it (a negative code is a signal)."""
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"


# ---------------------------------------------------------------------------------------------
# A finished job's files
# ---------------------------------------------------------------------------------------------
def _last_line(path: Path, keep: Callable[[str], bool]) -> str | None:
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if keep(line)]
    return lines[-1] if lines else None


def failure_reason(log: Path, console: Path) -> str:
    """The last error line of the log, else the last line of the console output or of the log."""
    error = _last_line(log, lambda line: " ERROR " in line)
    if error is not None:
        return error.split(" ERROR ", 1)[1]
    return (_last_line(console, str.strip) or _last_line(log, str.strip) or "no error message").strip()


def tidy_console(log: Path) -> None:
    """Keep a job's console output only where it holds more than its log (a traceback, warnings);
    a job that ended before its logging began has only console output: that becomes the log."""
    console = console_path(log)
    if not console.is_file():
        return
    if not log.is_file() or log.stat().st_size == 0:
        console.replace(log)
        return
    logged = set(log.read_text(encoding="utf-8", errors="replace").splitlines())
    extra = [line for line in console.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip() and line not in logged]
    if not extra:
        console.unlink()


# ---------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------
class Scheduler:
    def __init__(self, slots: list[Slot], log_dir: Path, out: TextIO, poll_seconds: float = 1.0,
                 stop_grace_seconds: float = STOP_GRACE_SECONDS, jobs_per_slot: int = 1) -> None:
        self.slots = slots
        self.jobs_per_slot = jobs_per_slot
        self.log_dir = log_dir
        self.out = out
        self.poll_seconds = poll_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.signal_received: int | None = None

    def run(self, tasks: list[Task]) -> Outcome:
        """Run ``tasks`` in order on the slots; returns when all ended or a signal stopped them."""
        outcome = Outcome()
        queue = deque(tasks)
        running: list[Running] = []
        with self._catching_stop_signals():
            while (queue or running) and self.signal_received is None:
                self._fill_slots(queue, running, outcome)
                if running:
                    time.sleep(self.poll_seconds)
                for job in [job for job in running if job.process.poll() is not None]:
                    running.remove(job)
                    self._finish(job, outcome)
            if self.signal_received is not None:
                self._stop(running, list(queue))
                outcome.stopped_by = self.signal_received
        return outcome

    def _fill_slots(self, queue: deque[Task], running: list[Running], outcome: Outcome) -> None:
        """Start queued tasks while a slot has room, each on the least busy slot."""
        while queue and self.signal_received is None:
            place = self._least_busy(running)
            if place is None:
                return
            started = self._start_next(queue, self.slots[place], outcome)
            if started is None:
                return
            started.place = place
            running.append(started)

    def _least_busy(self, running: list[Running]) -> int | None:
        """The index of the slot running the fewest jobs (the first of equals), None when all are full."""
        load = [0] * len(self.slots)
        for job in running:
            load[job.place] += 1
        place = min(range(len(self.slots)), key=load.__getitem__)
        return place if load[place] < self.jobs_per_slot else None

    @contextlib.contextmanager
    def _catching_stop_signals(self) -> Iterator[None]:
        # The handler only takes note: the loop stops the jobs, never half-way through a start.
        def note(signal_number: int, _frame: object) -> None:
            if self.signal_received is None:
                self.signal_received = signal_number

        previous = {s: signal.signal(s, note) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _start_next(self, queue: deque[Task], slot: Slot, outcome: Outcome) -> Running | None:
        """Start the next task that may start. Another process (a second study runner, an array task)
        may have finished a task's run since it was planned: skipped; or hold its folder: refused."""
        while queue:
            task = queue.popleft()
            if not task.rerun and RunDir(task.run_dir).is_finished():
                event(self.out, f"skip   {task.name}: finished meanwhile by another process")
                outcome.skipped.append(task.name)
                continue
            if not self._refused_if_held(task, outcome, None):
                return self._start(task, slot)
        return None

    def _refused_if_held(self, task: Task, outcome: Outcome, log: Path | None) -> bool:
        holder = RunDir(task.run_dir).lock_holder()
        if holder is None:
            return False
        in_use = f"{task.run_dir} is in use by {describe(holder)}"
        event(self.out, f"REFUSED {task.name}: {in_use}")
        outcome.failed.append(Failure(task.name, f"refused: {in_use}", log))
        return True

    def _start(self, task: Task, slot: Slot) -> Running:
        log = log_path(self.log_dir, task.name, slot)
        # The console is a file: no progress bars.
        env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", **{SLOT_VARIABLE: slot.tag}, **slot.environment())
        with open(console_path(log), "wb") as console:
            process = subprocess.Popen(task.command(slot, log), stdin=subprocess.DEVNULL, stdout=console,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True)
        event(self.out, f"start  {task.name} on {slot.tag} ({task.description})")
        print(f"       log: {log}", file=self.out, flush=True)
        return Running(task, slot, log, process, time.monotonic())

    def _finish(self, job: Running, outcome: Outcome) -> None:
        elapsed = format_duration(time.monotonic() - job.started)
        tidy_console(job.log)
        returncode = job.process.returncode
        if returncode == 0:
            outcome.finished.append(job.task.name)
            event(self.out, f"done   {job.task.name} on {job.slot.tag} after {elapsed}")
            return
        # Refused by the trainer because another process took the folder first: that one's run.
        if self._refused_if_held(job.task, outcome, job.log):
            return
        if not job.task.rerun and RunDir(job.task.run_dir).is_finished():
            event(self.out, f"skip   {job.task.name}: finished by another process (this one's log: {job.log})")
            outcome.skipped.append(job.task.name)
            return
        status = describe_status(returncode)
        reason = failure_reason(job.log, job.console)
        outcome.failed.append(Failure(job.task.name, status, job.log))
        record_failure(job.task.run_dir, status, reason, job.log)
        event(self.out, f"FAILED {job.task.name} on {job.slot.tag} after {elapsed} ({status}): {reason}")
        print(f"       log: {job.log}", file=self.out)
        if job.console.is_file():
            print(f"       console output: {job.console}", file=self.out)
        self.out.flush()

    def _stop(self, running: list[Running], not_started: list[Task]) -> None:
        """Stop every running job's process group (TERM, then KILL after the grace time) and list
        what was left unfinished."""
        for s in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        for job in running:
            signal_group(job.process, signal.SIGTERM)
        try:  # after a SIGHUP the terminal may be gone: the jobs are stopped even if printing fails
            print(file=self.out)
            event(self.out, f"Interrupted ({signal.Signals(self.signal_received).name}): "
                            "stopping the running jobs")
        finally:
            self._wait_then_kill(running)
        print("Left unfinished:", file=self.out)
        for job in running:
            print(f"  {job.task.name}  (stopped on {job.slot.tag}; log: {job.log})", file=self.out)
        for task in not_started:
            print(f"  {task.name}  (not started)", file=self.out)
        print("Run the same command again to go on: finished jobs are skipped, stopped ones resumed.",
              file=self.out, flush=True)

    def _wait_then_kill(self, running: list[Running]) -> None:
        deadline = time.monotonic() + self.stop_grace_seconds
        while any(group_alive(job.process) for job in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for job in running:
            signal_group(job.process, signal.SIGKILL)
            job.process.wait()
            tidy_console(job.log)


def record_failure(run_dir: Path, status: str, reason: str, log: Path) -> None:
    """Note the failure in the run folder's progress.json for ``--status``; a folder that cannot be
    written (a full disk) only loses that note: the failure is reported anyway."""
    with contextlib.suppress(WriteError):
        write_record(RunDir(run_dir).progress, FailureRecord(status, reason, str(log), now_iso()))


def signal_group(process: subprocess.Popen, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal_number)


def group_alive(process: subprocess.Popen) -> bool:
    """Whether anything of the job's process group still runs (its leader reaped first)."""
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
