"""``python -m study``: run a whole study (``run_train_clip.sh`` sets it up and hands over here).

    python -m study [--dry-run] [--help] [--list-jobs | --count-jobs | --job-index I | --leaderboard | --status]
                    [-- NAME=VALUE ...]

The words after ``--`` are the settings block of ``run_train_clip.sh``; the environment wins
over them. Exit status: 0 every job finished or was skipped, 1 a job failed (or was refused), 2 a
bad setting or job (nothing was started), 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP; with
--job-index also 75 when another process holds the job's folder (:mod:`study.array`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence, TextIO

from reporting.leaderboard import build_leaderboard, write_leaderboard
from study.array import print_job_list, run_job_index, shown_command, task_of
from study.devices import Devices, find_devices, refuse_jobs_per_gpu_in_an_array, task_devices
from study.plan import SKIP, Job, describe_action, plan_jobs
from study.scheduler import Failure, Outcome, Scheduler
from study.settings import Settings, describe_raw, read_settings
from study.status import print_status
from utils.errors import ConfigError, UserError

MODES = ("--list-jobs", "--count-jobs", "--leaderboard", "--status")
ARRAY_MODES = ("--list-jobs", "--count-jobs", "--job-index")

USAGE = """\
Usage: bash run_train_clip.sh [--dry-run] [--help]
       bash run_train_clip.sh --list-jobs | --count-jobs | --job-index I | --leaderboard | --status

Trains every IMAGE_ENCODERS × TEXT_ENCODERS combination (or, with USE_MULTI_CONFIG=true, every
entry of CONFIG_FILE) with train_clip.py: JOBS_PER_GPU jobs (default one) per GPU in GPUS at a
time, the rest queued; on a machine without CUDA one job at a time on the CPU. Each job writes OUTPUT_ROOT/<image>_<text>/ and
logs to LOG_DIR/<image>_<text>_gpu<id>_<YYYYmmdd_HHMMSS>.log. Jobs whose folder holds a finished
run are skipped; interrupted ones are resumed. Every job is checked before the first starts. At the
end a leaderboard is printed and written to OUTPUT_ROOT/leaderboard.csv and leaderboard.md.

On a cluster, one job per array task (see the README, "A study on a SLURM cluster"):
  --list-jobs     one line per job: index, state, run folder, command; the count on stderr
  --count-jobs    the number of jobs N, alone (sbatch --array=0-$((N-1)))
  --job-index I   run job I only, on every GPU visible to this task (one: train_clip.py; more:
                  torchrun, one process per GPU); exit 0 trained or finished already, 1 failed,
                  75 another process holds its folder (nothing done: rerun the task later)
  --leaderboard   rank whatever runs of the study have finished (unfinished ones are listed)
  --status        one line per job, from its run folder (also from another terminal or node):
                  done / running on GPU k, fold f of F, epoch e of E, time left / failed, with
                  its log / waiting; the count on stderr

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
  GPUS_PER_JOB           GPUs per job (default 1); more: GPUS in groups, each job a torchrun job of
                         that many processes seeing its group only (GPUS="0 1 2 3" GPUS_PER_JOB=2)
  JOBS_PER_GPU           jobs at once on each GPU (or group) of GPUS (default 1); more pays for small
                         models and images that leave most of a GPU idle (watch nvidia-smi); not
                         for an array (--job-index)
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
    mode: str | None = None  # one of MODES, or --job-index
    job_index: int | None = None
    block_arguments: tuple[str, ...] = ()


def parse_job_index(value: str | None) -> int:
    if value is None or not value.isdigit():
        raise ConfigError(f"--job-index needs a job's index (0, 1, ...; see --list-jobs), got '{value or ''}'")
    return int(value)


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    words = list(argv)
    block: list[str] = []
    if "--" in words:
        block = words[words.index("--") + 1:]
        words = words[:words.index("--")]
    modes, job_index, rest = [], None, []
    while words:
        word = words.pop(0)
        if word == "--job-index" or word.startswith("--job-index="):
            value = word.partition("=")[2] if "=" in word else (words.pop(0) if words else None)
            modes.append("--job-index")
            job_index = parse_job_index(value)
        elif word in MODES:
            modes.append(word)
        elif word in ("-h", "--help", "--dry-run"):
            rest.append(word)
        else:
            raise ConfigError(f"unknown option '{word}'; settings are variables (EPOCHS=5 bash "
                              "run_train_clip.sh), see --help")
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)}: choose one")
    return CommandLine("-h" in rest or "--help" in rest, "--dry-run" in rest, modes[0] if modes else None,
                       job_index, tuple(block))


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
        print(shown_command(job, settings, devices.slots[n % len(devices.slots)]), file=out)


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
    skipped = sum(job.action == SKIP for job in jobs) + len(outcome.skipped)
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
    scheduler = Scheduler(devices.slots, settings.log_dir, out, settings.poll_seconds,
                          jobs_per_slot=devices.jobs_per_slot)
    outcome = scheduler.run([task_of(job, settings) for job in jobs if job.action != SKIP])
    if outcome.stopped_by is not None:
        return 128 + outcome.stopped_by
    print(file=out)
    written = print_leaderboard(jobs, settings, out)
    print_summary(jobs, outcome, out)
    return 0 if written and not outcome.failed else 1


def run_mode(command_line: CommandLine, jobs: list[Job], settings: Settings, environ: Mapping[str, str],
             out: TextIO) -> int:
    """--count-jobs, --list-jobs, --leaderboard, --status or --job-index."""
    if command_line.mode == "--status":
        print_status(jobs, settings, out)
        return 0
    if command_line.mode in ARRAY_MODES:
        refuse_jobs_per_gpu_in_an_array(settings)
    if command_line.mode == "--count-jobs":
        print(len(jobs), file=out)
        return 0
    if command_line.mode == "--leaderboard":
        return 0 if print_leaderboard(jobs, settings, out) else 1
    devices = task_devices(settings, environ)
    if command_line.mode == "--list-jobs":
        print_job_list(jobs, settings, devices, out)
        return 0
    return run_job_index(jobs, command_line.job_index, settings, devices, out)


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
        if command_line.mode is not None:
            return run_mode(command_line, jobs, settings, environ, out)
        from study.validate import validate_jobs  # loads torch: not for --count-jobs on a login node

        validate_jobs(jobs, settings)
        devices = find_devices(settings, environ)
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
