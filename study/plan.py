"""The jobs of a study: which runs, in which folders, doing what, with which train_clip.py arguments.

A job is an image × text encoder combination, or one entry of a JSON config list. Its run folder is
``OUTPUT_ROOT/<image>_<text>`` named by the trainer's own :func:`utils.run_names.run_name`; config
entries that share a folder name get ``_cfg<index>`` each. What a job does follows its folder's
state (:meth:`utils.run_dir.RunDir.status`): finished → skip, interrupted → resume, FORCE → rerun.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.settings import Settings
from training.config import normalise_keys, with_alternatives
from utils.run_names import run_name
from utils.errors import ConfigError
from utils.io import read_json
from utils.run_dir import RunDir

SKIP, NEW, RESUME, OVERWRITE = "skip", "new", "resume", "overwrite"
ACTION_FLAGS = {RESUME: ["--resume"], OVERWRITE: ["--overwrite"], NEW: [], SKIP: []}


@dataclass(frozen=True)
class Job:
    """One train_clip.py run of the study."""

    number: int  # 1-based, in plan order
    name: str  # the run folder's name under OUTPUT_ROOT
    image_encoder: str
    text_encoder: str
    config_index: int | None = None  # the entry of CONFIG_FILE; None for a combination
    entry_keys: frozenset[str] = frozenset()  # fields the config entry sets (settings leave them alone)
    action: str = NEW

    def describe(self) -> str:
        entry = f", entry {self.config_index} of CONFIG_FILE" if self.config_index is not None else ""
        return f"job {self.number} ({self.name}{entry})"


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------
def combination_jobs(images: tuple[str, ...], texts: tuple[str, ...]) -> list[Job]:
    if not images:
        raise ConfigError("IMAGE_ENCODERS is empty: list at least one image encoder")
    if not texts:
        raise ConfigError("TEXT_ENCODERS is empty: list at least one text encoder")
    pairs = [(image, text) for image in images for text in texts]
    names = [run_name(image, text) for image, text in pairs]
    for name, count in Counter(names).items():
        if count > 1:
            sharing = " and ".join(f"{i} × {t}" for (i, t), n in zip(pairs, names) if n == name)
            raise ConfigError(f"IMAGE_ENCODERS × TEXT_ENCODERS: {sharing} would share the run folder "
                              f"'{name}'; list each encoder once")
    return [Job(number, name, image, text)
            for number, ((image, text), name) in enumerate(zip(pairs, names), 1)]


def config_entries(path: Path) -> list[dict[str, Any]]:
    data = read_json(path, "CONFIG_FILE")
    entries = [data] if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"CONFIG_FILE {path} must hold an object or a non-empty list of objects")
    return entries


def entry_job(path: Path, index: int, entry: dict[str, Any]) -> Job:
    """The job of one config entry; its keys are checked here (unknown key, wrong type)."""
    keys = normalise_keys(entry, f"CONFIG_FILE {path} entry {index}")
    encoders = []
    for kind in ("image", "text"):
        value = keys.get(f"{kind}_encoder")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"CONFIG_FILE {path}: entry {index} names no {kind} encoder "
                              f"(key '{kind}_encoder' or '{kind}_encoder_name')")
        encoders.append(value)
    return Job(index + 1, run_name(*encoders), encoders[0], encoders[1], index, frozenset(keys))


def config_jobs(path: Path) -> list[Job]:
    jobs = [entry_job(path, index, entry) for index, entry in enumerate(config_entries(path))]
    counts = Counter(job.name for job in jobs)
    # Entries that differ only in hyper-parameters get one folder each.
    return [dataclasses.replace(job, name=f"{job.name}_cfg{job.config_index}") if counts[job.name] > 1 else job
            for job in jobs]


def decide_action(job: Job, settings: Settings) -> Job:
    status = RunDir(settings.output_root / job.name).status()
    if status == "complete":
        action = OVERWRITE if settings.force else SKIP
    elif status == "partial":
        action = OVERWRITE if settings.force else RESUME
    else:
        action = NEW
    return dataclasses.replace(job, action=action)


def plan_jobs(settings: Settings) -> list[Job]:
    """Every job of the study, with what it does given its run folder's state."""
    if settings.use_multi_config:
        jobs = config_jobs(settings.config_file)
    else:
        jobs = combination_jobs(settings.image_encoders, settings.text_encoders)
    return [decide_action(job, settings) for job in jobs]


def describe_action(job: Job, settings: Settings) -> str:
    folder = settings.output_root / job.name
    return {
        SKIP: f"skip: finished ({folder / 'cv_summary.json'}; FORCE=true reruns it)",
        NEW: "run",
        RESUME: "resume the interrupted run",
        OVERWRITE: f"rerun from scratch (FORCE), replacing {folder}",
    }[job.action]


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def trainer_arguments(job: Job, settings: Settings, log: Path, gpu: int | None) -> list[str]:
    """train_clip.py's arguments for ``job``: its encoders or config entry, the settings the entry
    leaves out, the folder, log and GPU the runner chose, and EXTRA_ARGS last (they win)."""
    if job.config_index is not None:
        arguments = ["--config", str(settings.config_file), "--config-index", str(job.config_index)]
    else:
        arguments = ["--image-encoder", job.image_encoder, "--text-encoder", job.text_encoder]
    arguments += settings.trainer_flags(leave_out=with_alternatives(job.entry_keys))
    arguments += ["--output-dir", str(settings.output_root / job.name), "--log-file", str(log)]
    if gpu is not None:
        arguments += ["--gpu-id", str(gpu)]
    return arguments + ACTION_FLAGS[job.action] + list(settings.extra_args)
