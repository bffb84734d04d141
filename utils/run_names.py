"""Default names of runs and their logs: an encoder pair's folder name, where runs and logs go."""
from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path


def path_safe(name: str) -> str:
    """``clip:ViT-B/32`` → ``clip_ViT-B_32``: encoder names as file-name parts."""
    return re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("_")


def is_local_path(part: str) -> bool:
    """A part of an encoder name that is a folder or file (a hub name has at most one '/')."""
    return part.startswith(("/", "./", "../", "~")) or part.count("/") > 1


def encoder_name_part(name: str) -> str:
    """An encoder name as a run-folder name part; a local folder in it (``hf:/models/bert-base``) by
    its last component, not the whole path."""
    return path_safe(":".join(Path(part).name if is_local_path(part) else part for part in name.split(":")))


def run_name(image_encoder: str, text_encoder: str) -> str:
    """The default run folder (and log) name of an encoder pair."""
    return f"{encoder_name_part(image_encoder)}_{encoder_name_part(text_encoder)}"


# Where runs and their logs go when not told (train_clip.py and the study's settings alike),
# relative to the working directory, as in the users' guide.
DEFAULT_OUTPUT_ROOT = Path("checkpoints") / "clip_models"
DEFAULT_LOG_DIR = Path("logs") / "clip_training"


def default_run_dir(image_encoder: str, text_encoder: str) -> Path:
    return DEFAULT_OUTPUT_ROOT / run_name(image_encoder, text_encoder)


def default_log_file(image_encoder: str, text_encoder: str, gpu_id: int, started: datetime) -> Path:
    """``<image>_<text>_gpu<id>_<YYYYmmdd_HHMMSS>.log`` in DEFAULT_LOG_DIR."""
    return DEFAULT_LOG_DIR / f"{run_name(image_encoder, text_encoder)}_gpu{gpu_id}_{started:%Y%m%d_%H%M%S}.log"
