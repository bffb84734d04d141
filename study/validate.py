"""Check every job before the first one starts (also for --dry-run).

Each job's full argument list is parsed by the trainer's own parser and validation
(:func:`training.config.config_from_args`), its folders and files are looked for, and its encoder
names are resolved in the registries, which loads no weights. The first problem stops the study
with one line naming the job, so a typo in the last job does not surface at 3 a.m.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from models.image_encoders import resolve_image_encoder
from models.text_encoders import resolve_text_encoder
from study.plan import NEW, Job, trainer_arguments
from study.settings import Settings
from training.config import TrainConfig, config_from_args
from utils.errors import ConfigError, UserError

# Validation writes nothing: the log path only has to parse.
PLACEHOLDER_LOG = Path("validation.log")


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


def validate_job(job: Job, settings: Settings) -> None:
    # As a new run: whether an interrupted run may be resumed is the trainer's check, at its start.
    arguments = trainer_arguments(dataclasses.replace(job, action=NEW), settings, PLACEHOLDER_LOG, None)
    try:
        cfg = config_from_args(arguments)
        check_inputs_exist(cfg)
        resolve_image_encoder(cfg.image_encoder, cfg.image_weights)
        resolve_text_encoder(cfg.text_encoder, cfg.text_weights)
    except UserError as exc:
        raise JobError(f"{job.describe()}: {exc}") from None


def validate_jobs(jobs: Sequence[Job], settings: Settings) -> None:
    """Raise :class:`JobError` for the first job that cannot run."""
    for job in jobs:
        validate_job(job, settings)
