"""A study as an array of jobs: list them, run exactly one by its index (a SLURM array task).

Indices are the plan's order from 0 (the combinations image-major, or the config list's entries),
so the same settings give every array task the same job for the same index. What keeps two tasks
(or a task and a second study runner) out of each other's way is the run folder's lock
(:mod:`utils.run_lock`), which holds across the hosts of a shared file system.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TextIO

from study.devices import Devices, job_command
from study.plan import SKIP, Job, decide_action, describe_action
from study.scheduler import Outcome, Scheduler, Slot, Task, log_path
from study.settings import Settings
from utils.errors import ConfigError
from utils.run_dir import RunDir
from utils.run_lock import describe

# --job-index exit status when another live process holds the job's folder (BSD's EX_TEMPFAIL:
# nothing was done; try again later). 0: trained or already finished; 1: failed; 2: bad setting.
EXIT_HELD = 75


def job_state(job: Job, settings: Settings) -> str:
    """finished, running (a live process holds its folder), unfinished (something of a run) or new."""
    run_dir = RunDir(settings.output_root / job.name)
    holder = run_dir.lock_holder()
    if holder is not None:
        return f"running ({describe(holder)})"
    return {"complete": "finished", "partial": "unfinished", "empty": "new"}[run_dir.status()]


def task_of(job: Job, settings: Settings) -> Task:
    """The job as the scheduler runs it. Whether it resumes is decided again at its start: another
    process (an array task, a second runner) may have left a run in its folder since the plan."""
    return Task(job.name, describe_action(job, settings), settings.output_root / job.name,
                lambda slot, log: job_command(decide_action(job, settings), settings, slot, log),
                rerun=settings.force)


def shown_command(job: Job, settings: Settings, slot: Slot) -> str:
    """The command as the runner starts it on ``slot``, with the variables it sets in front."""
    log = log_path(settings.log_dir, job.name, slot)
    prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in slot.environment().items())
    return prefix + shlex.join(job_command(job, settings, slot, log))


def print_job_list(jobs: list[Job], settings: Settings, devices: Devices, out: TextIO) -> None:
    """One line per job: index, state, run folder, and the command --job-index runs here."""
    for index, job in enumerate(jobs):
        print(f"{index}\t{job_state(job, settings)}\t{settings.output_root / job.name}\t"
              f"{shown_command(job, settings, devices.slots[0])}", file=out)
    # On stderr: a script that counts or parses the job lines on stdout gets job lines only.
    print(f"{len(jobs)} job(s), indices 0..{len(jobs) - 1}: sbatch --array=0-{len(jobs) - 1} ... runs each "
          "with --job-index $SLURM_ARRAY_TASK_ID", file=sys.stderr)


def chosen_job(jobs: list[Job], index: int) -> Job:
    if not 0 <= index < len(jobs):
        raise ConfigError(f"--job-index {index}: the study has {len(jobs)} job(s), indices 0..{len(jobs) - 1}")
    return jobs[index]


def run_job_index(jobs: list[Job], index: int, settings: Settings, devices: Devices, out: TextIO) -> int:
    """Run job ``index`` only; see :data:`EXIT_HELD` for the exit status. A job that is finished or
    held by another process is told apart first: such a task loads nothing (it ends in a second)."""
    job = chosen_job(jobs, index)
    folder = settings.output_root / job.name
    print(f"train_clip study, job {index} of 0..{len(jobs) - 1}: {job.name} {devices.description}", file=out)
    if job.action == SKIP:
        print(f"Nothing to do: {folder} holds a finished run (FORCE=true reruns it).", file=out)
        return 0
    holder = RunDir(folder).lock_holder()
    if holder is not None:
        print(f"{folder} is in use by {describe(holder)}.", file=out)
        return left_to_holder(folder, out)
    from study.validate import validate_job  # loads torch: not for --list-jobs on a login node

    validate_job(job, settings)
    if settings.dry_run:
        print(shown_command(job, settings, devices.slots[0]), file=out)
        return 0
    settings.output_root.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    scheduler = Scheduler(devices.slots, settings.log_dir, out, settings.poll_seconds)
    return index_exit_status(scheduler.run([task_of(job, settings)]), folder, out)


def left_to_holder(folder: Path, out: TextIO) -> int:
    print(f"Left to the process that holds {folder} (exit {EXIT_HELD}): rerun this task later if that one "
          "does not finish it.", file=out)
    return EXIT_HELD


def index_exit_status(outcome: Outcome, folder: Path, out: TextIO) -> int:
    if outcome.stopped_by is not None:
        return 128 + outcome.stopped_by
    if outcome.finished or outcome.skipped:
        return 0
    failure = outcome.failed[0]
    if failure.status.startswith("refused: "):
        return left_to_holder(folder, out)
    print(f"Failed ({failure.status}); log: {failure.log}", file=sys.stderr)
    return 1
