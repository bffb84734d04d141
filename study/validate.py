"""Check every job before the first one starts (also for --dry-run).

Each job's full argument list is parsed by the trainer's own parser and validation
(:func:`training.arguments.config_from_args`), its folders and files are looked for, and its encoder
names are resolved in the registries, which loads no weights. The first problem stops the study
with one line naming the job, so a typo in the last job does not surface at 3 a.m.

With a held-out test set, every job must hold out the same images: the leaderboard publishes the
winner's test score as the study's result, which is honest only on images no job trained on or
was chosen on. ``training.run.split_off_test`` draws the same images for the same data, readable
images, groups, fraction and seed, so those settings must agree across jobs (a config entry may
set its own).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from models.image_encoders import resolve_image_encoder
from models.text_encoders import resolve_text_encoder
from study.plan import NEW, Job, trainer_arguments
from study.settings import Settings
from training.arguments import config_from_args
from training.config import TrainConfig
from utils.errors import ConfigError, UserError

# Validation writes nothing: the log path only has to parse.
PLACEHOLDER_LOG = Path("validation.log")
# What decides training.run.split_off_test's images: the data, which of its images are readable
# (dicom_first_frame keeps multi-frame DICOMs), their groups, the fraction and the seed.
HELD_OUT_FIELDS = ("data_dir", "data_csv", "dicom_first_frame", "groups_file", "group_regex", "group_by",
                   "test_fraction", "random_state")
PATH_FIELDS = frozenset({"data_dir", "data_csv", "groups_file"})


class JobError(ConfigError):
    """A job of the study cannot run as planned; the message names the job."""


def check_inputs_exist(cfg: TrainConfig) -> None:
    if cfg.data_csv is not None:
        if not Path(cfg.data_csv).is_file():
            raise ConfigError(f"data CSV not found: {cfg.data_csv} (DATA_CSV or the entry's data_csv: a CSV with "
                              "the columns path,label[,group])")
    elif not Path(str(cfg.data_dir)).is_dir():
        raise ConfigError(f"data folder not found: {cfg.data_dir} (DATA_DIR or the entry's data_dir: a "
                          "folder with one sub-folder of images per class)")
    if cfg.class_texts_file is not None and not Path(cfg.class_texts_file).is_file():
        raise ConfigError(f"class texts file not found: {cfg.class_texts_file}")


def validate_job(job: Job, settings: Settings) -> TrainConfig:
    """The job's checked configuration; :class:`JobError` naming the job when it cannot run."""
    # As a new run: whether an interrupted run may be resumed is the trainer's check, at its start.
    arguments = trainer_arguments(dataclasses.replace(job, action=NEW), settings, PLACEHOLDER_LOG, None)
    try:
        cfg = config_from_args(arguments)
        check_inputs_exist(cfg)
        resolve_image_encoder(cfg.image_encoder, cfg.image_weights)
        resolve_text_encoder(cfg.text_encoder, cfg.text_weights)
    except UserError as exc:
        raise JobError(f"{job.describe()}: {exc}") from None
    return cfg


def held_out_setting(cfg: TrainConfig, name: str) -> object:
    value = getattr(cfg, name)
    # The same file named two ways (relative, absolute) is the same data.
    return Path(value).resolve() if name in PATH_FIELDS and value is not None else value


def check_one_test_set(jobs: Sequence[Job], configs: Sequence[TrainConfig]) -> None:
    """With a test set in any job, every job must hold out the same images (see the module's docstring)."""
    if not any(cfg.test_fraction > 0 for cfg in configs):
        return
    first = configs[0]
    for job, cfg in zip(jobs, configs):
        differ = [name for name in HELD_OUT_FIELDS if held_out_setting(cfg, name) != held_out_setting(first, name)]
        if differ:
            raise JobError(f"{job.describe()} would hold out other test images than {jobs[0].describe()} "
                           f"(different {', '.join(differ)}): the study's test set must be the same for every job; "
                           "give every CONFIG_FILE entry the same values, or leave them to the settings")


def validate_jobs(jobs: Sequence[Job], settings: Settings) -> None:
    """Raise :class:`JobError` for the first job that cannot run, or when the jobs' test sets differ."""
    check_one_test_set(jobs, [validate_job(job, settings) for job in jobs])
