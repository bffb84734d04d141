"""Where a study's jobs run, and the command each runs there.

A slot is one GPU of GPUS, or (``GPUS_PER_JOB`` = K > 1) a group of K of them whose jobs are
``torchrun`` jobs of K processes seeing only their group's GPUs; on a machine without CUDA one CPU
slot. ``JOBS_PER_GPU`` jobs share each GPU slot at once (the CPU slot runs one). An array task
(``--job-index``) has one slot: the GPUs its scheduler made visible to it, one job.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from study.plan import Job, trainer_arguments
from study.scheduler import Slot
from study.settings import Settings
from utils.errors import ConfigError

TRAINER = Path(__file__).resolve().parents[1] / "train_clip.py"
# One machine per job: a free port on this host for the processes to meet (torchrun's --standalone).
TORCHRUN = ["-m", "torch.distributed.run", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]


@dataclass(frozen=True)
class Devices:
    slots: list[Slot]
    description: str  # for the plan's first line
    jobs_per_slot: int = 1  # JOBS_PER_GPU on GPU slots; the CPU runs one job at a time


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_groups(gpus: tuple[int, ...], per_job: int) -> list[tuple[int, ...]]:
    """GPUS in groups of GPUS_PER_JOB, in order: "0 1 2 3" by 2 → (0, 1), (2, 3)."""
    if len(gpus) % per_job:
        raise ConfigError(f"GPUS lists {len(gpus)} GPU(s), which GPUS_PER_JOB={per_job} does not divide into "
                          "whole jobs")
    groups = [gpus[i:i + per_job] for i in range(0, len(gpus), per_job)]
    for group in groups:
        if len(set(group)) < len(group):
            raise ConfigError(f"GPUS: the job on GPUs {' '.join(map(str, group))} names a GPU twice; one "
                              f"job's {per_job} processes need {per_job} different GPUs")
    return groups


def runner_visible(environ: Mapping[str, str]) -> list[str] | None:
    """The runner's own CUDA_VISIBLE_DEVICES entries (indices, UUIDs or MIG ids); None when unset."""
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [entry.strip() for entry in visible.split(",")] if visible else None


def group_slot(group: tuple[int, ...], visible: list[str] | None = None, hide_cuda: bool = False) -> Slot:
    """GPUS are indices into the GPUs the runner sees (``visible``, its CUDA_VISIBLE_DEVICES): a group's
    jobs get the runner's entries at those indices, not physical GPUs the user did not allow."""
    tag = "gpu" + "+".join(map(str, group))
    if len(group) == 1:  # inherits the runner's CUDA_VISIBLE_DEVICES: --gpu-id is an index into it
        return Slot(tag, None if hide_cuda else group[0], hide_cuda)
    names = map(str, group) if visible is None else (visible[i] for i in group)
    return Slot(tag, None, hide_cuda, processes=len(group), visible=",".join(names))


def jobs_at_once(jobs_per_gpu: int) -> str:
    return "one job" if jobs_per_gpu == 1 else f"{jobs_per_gpu} jobs (JOBS_PER_GPU)"


def find_devices(settings: Settings, environ: Mapping[str, str] = os.environ) -> Devices:
    """One slot per group of GPUS_PER_JOB entries of GPUS, running JOBS_PER_GPU jobs at once; one CPU
    slot, one job at a time, on a machine without CUDA."""
    groups = gpu_groups(settings.gpus, settings.gpus_per_job)
    per_job = f", {settings.gpus_per_job} per job (torchrun)" if settings.gpus_per_job > 1 else ""
    at_once = jobs_at_once(settings.jobs_per_gpu)
    if settings.force_cpu:  # testing switch: the GPU schedule unchanged, but no job sees CUDA
        slots = [group_slot(g, hide_cuda=True) for g in groups]
        return Devices(slots, f"on the CPU (DRIVER_FORCE_CPU){per_job}, {at_once} per GPU slot at a time: "
                              + " ".join(s.tag for s in slots), settings.jobs_per_gpu)
    count = cuda_device_count()
    if count == 0:
        return Devices([Slot("cpu")], "on the CPU (CUDA is not available), one at a time")
    for gpu in settings.gpus:
        if gpu >= count:
            raise ConfigError(f"GPUS: there is no GPU {gpu}; this machine has {count} CUDA device(s) "
                              f"(0..{count - 1})")
    visible = runner_visible(environ)
    return Devices([group_slot(g, visible) for g in groups],
                   f"on GPUs {' '.join(map(str, settings.gpus))}{per_job}, {at_once} per "
                   f"{'group' if per_job else 'GPU'} at a time", settings.jobs_per_gpu)


def refuse_jobs_per_gpu_in_an_array(settings: Settings) -> None:
    """An array task runs one job on the GPUs its scheduler gave it: JOBS_PER_GPU has no meaning there."""
    if settings.jobs_per_gpu > 1:
        raise ConfigError(f"JOBS_PER_GPU={settings.jobs_per_gpu} is for a study on one machine: an array task "
                          "runs one job on the GPUs SLURM gives it; set JOBS_PER_GPU=1 for the array (to share "
                          "a GPU between tasks, ask SLURM for a share of one, e.g. --gres=shard:1)")


def task_devices(settings: Settings, environ: Mapping[str, str] = os.environ) -> Devices:
    """An array task's one slot: every GPU its scheduler made visible to it (SLURM sets
    CUDA_VISIBLE_DEVICES for --gres=gpu:K), one process per GPU; GPUS and GPUS_PER_JOB are not used."""
    count = 0 if settings.force_cpu else cuda_device_count()
    visible = environ.get("CUDA_VISIBLE_DEVICES", "")
    tag = "gpu" + visible.replace(",", "+") if visible else "gpu"
    if count == 0:
        return Devices([Slot("cpu", hide_cuda=settings.force_cpu)], "on the CPU (no CUDA device visible)")
    if count == 1:
        return Devices([Slot(tag, 0)], "on the one GPU visible to this task")
    # The job inherits the task's CUDA_VISIBLE_DEVICES as it is (it may name GPUs by UUID).
    return Devices([Slot(tag, None, processes=count)], f"on the {count} GPUs visible to this task (torchrun)")


def job_command(job: Job, settings: Settings, slot: Slot, log: Path) -> list[str]:
    """train_clip.py for a one-GPU (or CPU) slot; torchrun of one process per GPU for a group."""
    if slot.processes > 1:
        launcher = [sys.executable, *TORCHRUN, "--nproc-per-node", str(slot.processes), str(TRAINER)]
        return launcher + trainer_arguments(job, settings, log, None)
    return [sys.executable, str(TRAINER), *trainer_arguments(job, settings, log, slot.gpu)]
