"""The study scheduler with a fake trainer: slots and queue, logs, failures, locked folders, signals.

The fake trainer is a tiny Python script; what it does is chosen per task (``behaviour``), so these
tests need neither torch nor data and take about a second each.
"""
from __future__ import annotations

import io
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from study.scheduler import Outcome, Scheduler, Slot, Task
from utils.run_dir import RunDir

FAKE_TRAINER = r'''
import os, subprocess, sys, time
log, behaviour, marker = sys.argv[1], sys.argv[2], sys.argv[3]
def log_line(level, text):
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"2026-01-01 00:00:00 {level} {text}\n")
    print(f"2026-01-01 00:00:00 {level} {text}", flush=True)  # the console repeats the log
if behaviour == "ok":
    log_line("INFO", "fold 1 epoch 1/1 股骨柄")
elif behaviour == "fail":
    log_line("INFO", "starting")
    log_line("ERROR", "out of patience: nothing to learn")
    sys.exit(3)
elif behaviour == "crash":  # before its logging began: only console output
    print("Traceback (most recent call last):\nValueError: bad flag", file=sys.stderr)
    sys.exit(1)
elif behaviour == "warn":
    log_line("INFO", "done")
    print("UserWarning: something the log does not say", file=sys.stderr)
elif behaviour == "wait":  # runs until the test releases it
    open(marker, "w").close()
    release = os.path.join(os.path.dirname(marker), "release")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    log_line("INFO", "released")
elif behaviour == "hang":  # a worker of its own, like a data loader's
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    log_line("INFO", "training")
    with open(marker, "w") as handle:
        handle.write(str(worker.pid))
    time.sleep(600)
'''


@pytest.fixture
def fake_trainer(tmp_path: Path) -> Path:
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER, encoding="utf-8")
    return path


def make_task(fake_trainer: Path, name: str, behaviour: str, seen: list | None = None) -> Task:
    marker = fake_trainer.parent / f"{name}.started"

    def command(slot: Slot, log: Path) -> list[str]:
        if seen is not None:
            seen.append((name, slot.tag, log))
        return [sys.executable, str(fake_trainer), str(log), behaviour, str(marker)]

    return Task(name, "run", fake_trainer.parent / "runs" / name, command)


def run(tmp_path: Path, tasks: list[Task], slots: list[Slot] | None = None,
        jobs_per_slot: int = 1) -> tuple[Outcome, str]:
    out = io.StringIO()
    (tmp_path / "logs").mkdir(exist_ok=True)
    scheduler = Scheduler(slots or [Slot("gpu0", 0), Slot("gpu1", 1)], tmp_path / "logs", out, poll_seconds=0.05,
                          jobs_per_slot=jobs_per_slot)
    return scheduler.run(tasks), out.getvalue()


def events(output: str) -> list[tuple[str, str]]:
    """(kind, job name) of each timestamped event line."""
    found = re.findall(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (start|done|FAILED|REFUSED)\s+(\S+?):? ", output, re.M)
    return [(kind, name) for kind, name in found]


def test_one_job_per_slot_the_rest_queued(tmp_path: Path, fake_trainer: Path) -> None:
    seen: list = []
    tasks = [make_task(fake_trainer, name, "ok", seen) for name in ("a", "b", "c")]
    outcome, output = run(tmp_path, tasks)
    assert outcome.finished and sorted(outcome.finished) == ["a", "b", "c"] and not outcome.failed
    kinds = events(output)
    assert kinds[:2] == [("start", "a"), ("start", "b")]
    # c waits for a free slot, and takes the slot that came free
    first_done = next(i for i, (kind, _) in enumerate(kinds) if kind == "done")
    assert first_done < kinds.index(("start", "c"))
    freed = re.search(rf"done   {kinds[first_done][1]} on (gpu\d)", output)[1]
    assert re.search(rf"start  c on {freed} ", output)
    assert [(name, tag) for name, tag, _ in seen[:2]] == [("a", "gpu0"), ("b", "gpu1")]


def test_logs_are_named_per_job_and_slot_and_console_output_repeating_them_is_dropped(
        tmp_path: Path, fake_trainer: Path) -> None:
    outcome, output = run(tmp_path, [make_task(fake_trainer, "股骨柄_job", "ok")], [Slot("cpu")])
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(logs) == 1 and re.fullmatch(r"股骨柄_job_cpu_\d{8}_\d{6}\.log", logs[0]), logs
    assert f"log: {tmp_path / 'logs' / logs[0]}" in output


def test_a_failed_job_is_reported_with_the_error_line_of_its_log(tmp_path: Path, fake_trainer: Path) -> None:
    tasks = [make_task(fake_trainer, "bad", "fail"), make_task(fake_trainer, "good", "ok")]
    outcome, output = run(tmp_path, tasks)
    assert outcome.finished == ["good"]
    [failure] = outcome.failed
    assert failure.name == "bad" and failure.status == "exit 3" and failure.log.is_file()
    assert re.search(r"FAILED bad on gpu0 after \d+s \(exit 3\): out of patience: nothing to learn$", output, re.M)


def test_console_output_is_kept_only_when_it_says_more(tmp_path: Path, fake_trainer: Path) -> None:
    tasks = [make_task(fake_trainer, "crash", "crash"), make_task(fake_trainer, "warn", "warn")]
    outcome, output = run(tmp_path, tasks)
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    # crash: its console output became its log; warn: the warning is kept next to the log
    assert [Path(n).suffix for n in names] == [".log", ".console", ".log"], names
    crash_log = next(p for p in (tmp_path / "logs").iterdir() if p.name.startswith("crash"))
    assert "ValueError: bad flag" in crash_log.read_text(encoding="utf-8")
    assert "FAILED crash on gpu0" in output and "(exit 1): ValueError: bad flag" in output
    assert outcome.finished == ["warn"]


def test_a_folder_held_by_a_live_process_is_refused_naming_the_holder(tmp_path: Path, fake_trainer: Path) -> None:
    held = make_task(fake_trainer, "held", "ok")
    with RunDir(held.run_dir).lock():
        outcome, output = run(tmp_path, [held, make_task(fake_trainer, "free", "ok")])
    assert outcome.finished == ["free"]
    [failure] = outcome.failed
    assert failure.name == "held" and failure.log is None
    assert f"is in use by process {os.getpid()} on host" in failure.status
    assert re.search(rf"REFUSED held: {re.escape(str(held.run_dir))} is in use by process {os.getpid()} ", output)
    assert not any(p.name.startswith("held") for p in (tmp_path / "logs").iterdir())  # never started


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_every_job_group_and_lists_what_was_left(tmp_path: Path, fake_trainer: Path,
                                                                signal_number: signal.Signals) -> None:
    handler_before = signal.getsignal(signal_number)
    tasks = [make_task(fake_trainer, name, "hang") for name in ("one", "two", "three")]
    markers = [tmp_path / "one.started", tmp_path / "two.started"]

    def signal_when_both_run() -> None:
        deadline = time.monotonic() + 60
        while not all(m.is_file() and m.read_text() for m in markers) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal_number)

    threading.Thread(target=signal_when_both_run, daemon=True).start()
    outcome, output = run(tmp_path, tasks)
    assert outcome.stopped_by == signal_number
    assert f"Interrupted ({signal_number.name}): stopping the running jobs" in output
    unfinished = output.split("Left unfinished:", 1)[1]
    assert "one  (stopped on gpu0; log: " in unfinished and "two  (stopped on gpu1; log: " in unfinished
    assert "three  (not started)" in unfinished
    workers = [int(m.read_text()) for m in markers]
    assert not any(process_alive(pid) for pid in workers)  # the job's whole group was stopped
    assert signal.getsignal(signal_number) == handler_before  # the handlers are put back


# ---------------------------------------------------------------------------------------------
# JOBS_PER_GPU: K jobs at once on each slot
# ---------------------------------------------------------------------------------------------
def release_when(tmp_path: Path, names: list[str], seen_started: list[set[str]]) -> threading.Thread:
    """A thread that waits until the "wait" jobs ``names`` all run, notes which jobs have started
    half a second later (a job started too many would be there), then releases every waiting job."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{n}.started").is_file() for n in names) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # ten polls of the scheduler
        seen_started.append({p.name.removesuffix(".started") for p in tmp_path.glob("*.started")})
        (tmp_path / "release").touch()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def most_at_once(output: str) -> dict[str, int]:
    """The most jobs running at once on each slot, from the scheduler's start and end events (it
    starts a job only after it saw another end, so this is what ran)."""
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    for kind, slot in re.findall(r"^\[[^]]+\] (start|done|FAILED)\s+\S+ on (\S+)", output, re.M):
        running[slot] = running.get(slot, 0) + (1 if kind == "start" else -1)
        most[slot] = max(most.get(slot, 0), running[slot])
    return most


def test_k_jobs_run_at_once_on_each_slot_never_more(tmp_path: Path, fake_trainer: Path) -> None:
    seen: list = []
    names = [f"job{i}" for i in range(7)]
    tasks = [make_task(fake_trainer, name, "wait", seen) for name in names]
    started: list[set[str]] = []
    release_when(tmp_path, names[:4], started)
    outcome, output = run(tmp_path, tasks, jobs_per_slot=2)
    assert started == [set(names[:4])], output  # two slots of two: the fifth waited for a place
    assert sorted(outcome.finished) == names and not outcome.failed
    # every slot gets a job before any gets a second
    assert [tag for _, tag, _ in seen[:4]] == ["gpu0", "gpu1", "gpu0", "gpu1"]
    assert most_at_once(output) == {"gpu0": 2, "gpu1": 2}


def test_a_failed_job_frees_its_place_and_the_others_go_on(tmp_path: Path, fake_trainer: Path) -> None:
    tasks = [make_task(fake_trainer, "bad", "fail"), make_task(fake_trainer, "first", "wait"),
             make_task(fake_trainer, "second", "wait"), make_task(fake_trainer, "third", "wait")]
    started: list[set[str]] = []
    # "second" can only start in the place "bad" left, while "first" still runs
    release_when(tmp_path, ["first", "second"], started)
    outcome, output = run(tmp_path, tasks, [Slot("gpu0", 0)], jobs_per_slot=2)
    assert started == [{"first", "second"}], output  # and "third" waited: two at once
    assert [f.name for f in outcome.failed] == ["bad"] and sorted(outcome.finished) == ["first", "second", "third"]
    assert most_at_once(output) == {"gpu0": 2}


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_stops_all_k_jobs_of_a_slot(tmp_path: Path, fake_trainer: Path) -> None:
    names = ["one", "two", "three", "four"]
    tasks = [make_task(fake_trainer, name, "hang") for name in names]
    markers = [tmp_path / f"{name}.started" for name in names[:3]]

    def interrupt_when_three_run() -> None:
        deadline = time.monotonic() + 60
        while not all(m.is_file() and m.read_text() for m in markers) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_three_run, daemon=True).start()
    outcome, output = run(tmp_path, tasks, [Slot("gpu0", 0)], jobs_per_slot=3)
    assert outcome.stopped_by == signal.SIGINT
    unfinished = output.split("Left unfinished:", 1)[1]
    for name in names[:3]:
        assert f"{name}  (stopped on gpu0; log: " in unfinished
    assert "four  (not started)" in unfinished
    assert not any(process_alive(int(m.read_text())) for m in markers)  # every job's workers too
