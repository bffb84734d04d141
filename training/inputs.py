"""Before anything is written: every check of the inputs, then the run folder locked.

Under torchrun only rank 0 checks and locks; the other processes receive its verdict, so that all
go on or all stop (docs/design.md §1).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from typing import Iterator

from data.dicom import check_window
from data.folder import ImageFolder, scan_image_folder, undecodable_names
from data.groups import assign_groups
from data.manifest import scan_manifest
from data.texts import load_class_texts
from models.image_encoders import resolve_image_encoder
from models.text_encoders import resolve_text_encoder
from training.config import ConfigError, TrainConfig
from training.distributed import Distributed
from training.run import check_output_contents, check_output_location
from utils.errors import UserError
from utils.run_dir import RunDir

log = logging.getLogger("train_clip")


def check_inputs(cfg: TrainConfig, run_dir: RunDir) -> tuple[ImageFolder, list[list[str]]]:
    """Every check that needs nothing written: encoder names, data, class texts, the output's place."""
    resolve_image_encoder(cfg.image_encoder, cfg.image_weights)
    resolve_text_encoder(cfg.text_encoder, cfg.text_weights)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")
    check_window(cfg.dicom_window)
    check_output_location(cfg, run_dir)
    images = scan_image_folder(cfg.data_dir) if cfg.data_dir else scan_manifest(cfg.data_csv)
    check_output_location(cfg, run_dir, images)  # a manifest may list images anywhere
    images = assign_groups(images, cfg.groups_file, cfg.group_regex, cfg.group_by)
    odd = undecodable_names(images.paths, images.root)
    if odd:
        log.warning("%d file name(s) are not valid UTF-8; results name them with \\xNN escapes: %s", len(odd),
                    ", ".join(odd[:5]) + (" ..." if len(odd) > 5 else ""))
    return images, load_class_texts(images.class_names, cfg.class_texts_file, cfg.text_template)


@contextlib.contextmanager
def checked_and_locked(cfg: TrainConfig, run_dir: RunDir,
                       processes: Distributed) -> Iterator[tuple[ImageFolder, list[list[str]]]]:
    """The checked inputs, with the run folder locked by rank 0 until the end."""
    if not processes.is_main:
        verdict = processes.broadcast(None)
        if isinstance(verdict, str):
            raise UserError("stopped: rank 0 refused the run (its error says why)")
        yield verdict
        return
    told = False
    try:
        images, class_texts = check_inputs(cfg, run_dir)
        check_output_contents(cfg, run_dir)  # refused without touching the folder, not even its lock
        with run_dir.lock():
            check_output_contents(cfg, run_dir)  # again: another run may have written it meanwhile
            told = True
            processes.broadcast((images, class_texts))
            yield images, class_texts
    except UserError as exc:
        if not told:
            processes.broadcast(str(exc))
        raise
