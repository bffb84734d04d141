"""``python -m study``: run a whole study (``run_train_clip.sh`` sets it up and hands over here).

    python -m study [--dry-run] [--help] [-- NAME=VALUE ...]

The words after ``--`` are the settings block of ``run_train_clip.sh``; the environment wins
over them. Exit status: 0 every job finished or was skipped, 1 a job failed (or was refused), 2 a
bad setting or job (nothing was started), 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, TextIO

from reporting.leaderboard import build_leaderboard, write_leaderboard
from study.plan import SKIP, Job, describe_action, plan_jobs, trainer_arguments
from study.scheduler import Failure, Outcome, Scheduler, Slot, Task, log_path
from study.settings import Settings, describe_raw, read_settings
from study.validate import validate_jobs
from utils.errors import ConfigError, UserError

TRAINER = Path(__file__).resolve().parents[1] / "train_clip.py"

USAGE = """\
Usage: bash run_train_clip.sh [--dry-run] [--help]

Trains every IMAGE_ENCODERS × TEXT_ENCODERS combination (or, with USE_MULTI_CONFIG=true, every
entry of CONFIG_FILE) with train_clip.py: one job per GPU in GPUS at a time, the rest queued; on a
machine without CUDA one job at a time on the CPU. Each job writes OUTPUT_ROOT/<image>_<text>/ and
logs to LOG_DIR/<image>_<text>_gpu<id>_<YYYYmmdd_HHMMSS>.log. Jobs whose folder holds a finished
run are skipped; interrupted ones are resumed. Every job is checked before the first starts. At the
end a leaderboard is printed and written to OUTPUT_ROOT/leaderboard.csv and leaderboard.md.

Settings are the variables at the top of run_train_clip.sh; the environment overrides them, arrays
as space-separated words:
  EPOCHS=5 GPUS="0 1" IMAGE_ENCODERS="resnet18 resnet50" bash run_train_clip.sh
  USE_MULTI_CONFIG=true CONFIG_FILE=my_study.json bash run_train_clip.sh
  EXTRA_ARGS="--freeze-text --text-template 'an X-ray of {class_name}'" bash run_train_clip.sh

Every train_clip.py flag is a setting named like it in capitals: WEIGHT_SMOOTH_FACTOR=0.5 gives
--weight-smooth-factor 0.5, USE_CV=true --use-cv (false: --no-use-cv), USE_AMP=false --no-amp.
An empty value is not set. A config-list entry's own keys win over these settings.
The runner's own settings:
  GPUS                   GPU indices; one job per entry at a time (repeat an index for two jobs)
  IMAGE_ENCODERS         image encoder names, e.g. resnet18 resnet50:pretrained
  TEXT_ENCODERS          text encoder names, e.g. clip:ViT-B/32 bert-base-chinese
  USE_MULTI_CONFIG       true: one job per entry of CONFIG_FILE (a JSON list)
  CONFIG_FILE            the JSON config list
  OUTPUT_ROOT            one folder per job is made here, plus the leaderboard
  EXTRA_ARGS             more train_clip.py flags for every job (they win over everything)
  LOG_DIR                where the job logs go (default logs/clip_training)
  LEADERBOARD_METRIC     accuracy, balanced_accuracy (default), macro_f1 or roc_auc
  FORCE                  true: rerun finished jobs, replacing their results
  DRY_RUN                true (or --dry-run): check and print the jobs and commands, run nothing
  PYTHON                 the Python to run (default .venv/bin/python, else python3)

Exit status: 0 when every job finished or was skipped, 1 when a job failed or was refused, 2 for a
bad setting or job (nothing started), 130/143/129 when interrupted (the running jobs are stopped).
"""


@dataclass(frozen=True)
class CommandLine:
    want_help: bool = False
    dry_run: bool = False
    block_arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Devices:
    slots: list[Slot]
    description: str  # for the plan's first line


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    words = list(argv)
    block: list[str] = []
    if "--" in words:
        block = words[words.index("--") + 1:]
        words = words[:words.index("--")]
    for word in words:
        if word not in ("-h", "--help", "--dry-run"):
            raise ConfigError(f"unknown option '{word}'; settings are variables (EPOCHS=5 bash "
                              "run_train_clip.sh), see --help")
    return CommandLine("-h" in words or "--help" in words, "--dry-run" in words, tuple(block))


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def find_devices(settings: Settings) -> Devices:
    """One slot per entry of GPUS; one CPU slot on a machine without CUDA."""
    if settings.force_cpu:  # testing switch: the GPU schedule unchanged, but no job sees CUDA
        slots = [Slot(f"gpu{g}", None, hide_cuda=True) for g in settings.gpus]
        return Devices(slots, "on the CPU (DRIVER_FORCE_CPU), one job per GPU slot at a time: "
                              + " ".join(s.tag for s in slots))
    count = cuda_device_count()
    if count == 0:
        return Devices([Slot("cpu")], "on the CPU (CUDA is not available), one at a time")
    for gpu in settings.gpus:
        if gpu >= count:
            raise ConfigError(f"GPUS: there is no GPU {gpu}; this machine has {count} CUDA device(s) "
                              f"(0..{count - 1})")
    return Devices([Slot(f"gpu{g}", g) for g in settings.gpus],
                   f"on GPUs {' '.join(map(str, settings.gpus))}, one job per GPU at a time")


def job_command(job: Job, settings: Settings, slot: Slot, log: Path) -> list[str]:
    return [sys.executable, str(TRAINER), *trainer_arguments(job, settings, log, slot.gpu)]


def task_of(job: Job, settings: Settings) -> Task:
    return Task(job.name, describe_action(job, settings), settings.output_root / job.name,
                lambda slot, log: job_command(job, settings, slot, log))


# ---------------------------------------------------------------------------------------------
# What the user sees
# ---------------------------------------------------------------------------------------------
def print_plan(jobs: list[Job], settings: Settings, devices: Devices, out: TextIO) -> None:
    to_run = sum(job.action != SKIP for job in jobs)
    print(f"train_clip driver: {len(jobs)} job(s), {to_run} to run, {devices.description}", file=out)
    if settings.from_environment:
        print(f"Settings from the environment: {' '.join(settings.from_environment)}", file=out)
    for job in jobs:
        print(f"  {job.number}. {job.name}: {describe_action(job, settings)}", file=out)


def print_dry_run(jobs: list[Job], settings: Settings, devices: Devices, out: TextIO) -> None:
    print("\nCommands (dry run; jobs take the next free slot, shown here for the first round):", file=out)
    runnable = [job for job in jobs if job.action != SKIP]
    for n, job in enumerate(runnable):
        slot = devices.slots[n % len(devices.slots)]
        log = log_path(settings.log_dir, job.name, slot)
        prefix = "CUDA_VISIBLE_DEVICES= " if slot.hide_cuda else ""
        print(prefix + shlex.join(job_command(job, settings, slot, log)), file=out)


def print_leaderboard(jobs: list[Job], settings: Settings, out: TextIO) -> bool:
    """Print and write the leaderboard of the study's jobs; False when it could not be written."""
    try:
        ranked, without_results = build_leaderboard(settings.output_root, [j.name for j in jobs],
                                                    settings.leaderboard_metric)
        print(write_leaderboard(settings.output_root, ranked, settings.leaderboard_metric, without_results),
              end="", file=out)
    except (UserError, OSError) as exc:
        print(f"error: the leaderboard could not be written: {exc}", file=sys.stderr)
        return False
    return True


def print_summary(jobs: list[Job], outcome: Outcome, out: TextIO) -> None:
    skipped = sum(job.action == SKIP for job in jobs)
    print(f"\n{len(jobs)} job(s): {len(outcome.finished)} finished, {skipped} skipped (already finished), "
          f"{len(outcome.failed)} failed", file=out)
    if outcome.failed:
        print("Failed jobs:", file=out)
        for failure in outcome.failed:
            print(f"  {failure.name}  ({failure.status}){describe_log(failure)}", file=out)


def describe_log(failure: Failure) -> str:
    return f"  log: {failure.log}" if failure.log is not None else ""


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------
def run_study(jobs: list[Job], settings: Settings, devices: Devices, out: TextIO) -> int:
    settings.output_root.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    scheduler = Scheduler(devices.slots, settings.log_dir, out, settings.poll_seconds)
    outcome = scheduler.run([task_of(job, settings) for job in jobs if job.action != SKIP])
    if outcome.stopped_by is not None:
        return 128 + outcome.stopped_by
    print(file=out)
    written = print_leaderboard(jobs, settings, out)
    print_summary(jobs, outcome, out)
    return 0 if written and not outcome.failed else 1


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO = sys.stdout) -> int:
    environ = os.environ if environ is None else environ
    try:
        command_line = parse_command_line(sys.argv[1:] if argv is None else argv)
        if command_line.want_help:
            print(USAGE + "\nSettings now (run_train_clip.sh, then the environment):", file=out)
            print("\n".join(describe_raw(command_line.block_arguments, environ)), file=out)
            return 0
        settings = read_settings(command_line.block_arguments, environ, command_line.dry_run)
        jobs = plan_jobs(settings)
        validate_jobs(jobs, settings)
        devices = find_devices(settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_plan(jobs, settings, devices, out)
    if settings.dry_run:
        print_dry_run(jobs, settings, devices, out)
        return 0
    return run_study(jobs, settings, devices, out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while planning, before any job started
        sys.exit(130)
