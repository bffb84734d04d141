"""A run's shared state and its data plan: images decoded once, the held-out test set, the folds."""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from sklearn.model_selection import train_test_split

from data.folder import DataError, ImageFolder, display_path
from data.folds import Fold, check_class_sizes, make_folds, make_holdout_split
from data.images import ImageCache, build_image_cache, describe_failures, duplicate_groups
from models.clip_model import CLIPClassifier
from training.config import ConfigError, TrainConfig
from utils.io import read_json
from utils.run_dir import RunDir, RunDirError

log = logging.getLogger("train_clip")


@dataclass
class Run:
    """Everything a run's folds share: decided once, before any fold starts."""

    cfg: TrainConfig
    run_dir: RunDir
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    images: ImageFolder
    cache: ImageCache
    class_texts: list[list[str]]
    folds: list[Fold]
    test_idx: list[int]
    model: CLIPClassifier
    initial_state: dict[str, torch.Tensor] = field(repr=False)
    # The text tower's tokenizer and config files, carried by every checkpoint (predict.py).
    text_files: dict[str, torch.Tensor] = field(repr=False)
    # This invocation (a segment of the run: first start or a resumption), for wall_time_s.
    segment_started: str = field(default_factory=lambda: dt.datetime.now().astimezone().isoformat())
    segment_clock: float = field(default_factory=time.perf_counter)

    @property
    def labels(self) -> list[int]:
        return self.images.labels

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What every checkpoint carries besides the weights, so predict.py needs nothing else."""
        return {"config": self.cfg.to_dict(), "class_names": list(self.images.class_names),
                "class_texts": self.class_texts, "text_encoder_files": self.text_files}

    def record_time(self) -> None:
        """Add this segment's time so far to the run's total (kept across interruptions)."""
        self.run_dir.record_time(self.segment_started, time.perf_counter() - self.segment_clock)

    def display_path(self, index: int) -> str:
        return display_path(self.images.paths[index], self.images.root)


def decode_images(cfg: TrainConfig, images: ImageFolder) -> tuple[ImageCache, ImageFolder]:
    """Decode every image once; unreadable files are skipped with a warning (fatal with --strict-images)."""
    decoded = build_image_cache(images.paths, cfg.img_size, cfg.cache_mb, threads=max(1, cfg.num_workers))
    if decoded.failures:
        listed = describe_failures(decoded.failures)
        if cfg.strict_images:
            raise DataError(f"--strict-images: {len(decoded.failures)} unreadable image(s): {listed}")
        log.warning("Skipping %d unreadable image(s): %s", len(decoded.failures), listed)
        failed = {path for path, _ in decoded.failures}
        keep = [i for i, p in enumerate(images.paths) if p not in failed]
        images = ImageFolder(images.root, images.class_names, [images.paths[i] for i in keep],
                             [images.labels[i] for i in keep])
    warn_duplicates(images, decoded.hashes)
    return decoded.cache, images


def warn_duplicates(images: ImageFolder, hashes: Sequence[str]) -> None:
    label_of = dict(zip(images.paths, images.labels))
    for group in duplicate_groups(images.paths, hashes):
        classes = sorted({images.class_names[label_of[p]] for p in group})
        files = ", ".join(str(p.relative_to(images.root)) for p in group)
        if len(classes) > 1:
            log.warning("Identical images in different classes (%s): %s", ", ".join(classes), files)
        else:
            log.warning("Identical images within class %s (they can land in training and validation at "
                        "once, inflating the score): %s", classes[0], files)


def split_off_test(cfg: TrainConfig, images: ImageFolder) -> tuple[list[int], list[int]]:
    """Development and test indices; the test set is stratified and never seen by any fold."""
    everything = list(range(len(images.labels)))
    if cfg.test_fraction == 0:
        return everything, []
    check_class_sizes(images.labels, images.class_names, 2)
    dev, test = train_test_split(everything, test_size=cfg.test_fraction, stratify=images.labels,
                                 random_state=cfg.random_state)
    return sorted(dev), sorted(test)


def plan_folds(cfg: TrainConfig, images: ImageFolder, dev_idx: list[int]) -> list[Fold]:
    dev_labels = [images.labels[i] for i in dev_idx]
    if cfg.use_cv:
        check_class_sizes(dev_labels, images.class_names, cfg.n_splits)
        local = make_folds(dev_labels, cfg.n_splits, cfg.random_state)
    else:
        local = make_holdout_split(dev_labels, images.class_names, cfg.val_fraction, cfg.random_state)
    folds = [Fold(f.number, [dev_idx[i] for i in f.train_idx], [dev_idx[i] for i in f.val_idx]) for f in local]
    smallest = min(len(f.train_idx) for f in folds)
    if cfg.batch_size > smallest:
        raise DataError(f"--batch-size {cfg.batch_size} is larger than the smallest training fold "
                        f"({smallest} images); lower --batch-size")
    return folds


def folds_document(cfg: TrainConfig, images: ImageFolder, folds: list[Fold], test_idx: list[int]) -> dict[str, Any]:
    def paths(indices: Sequence[int]) -> list[str]:
        return [display_path(images.paths[i], images.root) for i in indices]

    return {"mode": "cv" if cfg.use_cv else "holdout", "random_state": cfg.random_state,
            "class_names": images.class_names, "test": paths(test_idx),
            "folds": [{"fold": f.number, "train": paths(f.train_idx), "val": paths(f.val_idx)} for f in folds]}


def check_resumable(run: Run) -> None:
    """A resumed run must see the same images in the same folds."""
    saved = read_json(run.run_dir.folds, "folds file of the run")
    if saved != folds_document(run.cfg, run.images, run.folds, run.test_idx):
        raise ConfigError(f"--resume refused: the images under {run.cfg.data_dir} changed since the run in "
                          f"{run.run_dir.path} started (its folds.json no longer matches)")



def check_output_location(cfg: TrainConfig, run_dir: RunDir) -> None:
    """Refuse an output folder that is, holds or lies inside the data (before anything is written)."""
    output, data = run_dir.path.resolve(), Path(cfg.data_dir).resolve()
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise RunDirError(f"--output-dir {run_dir.path} exists and is not a folder")
    if output == data or output in data.parents:
        raise RunDirError(f"--output-dir {run_dir.path} holds the data (--data-dir {cfg.data_dir}); a run "
                          "writes only into a folder of its own: choose one outside the data")
    if data in output.parents:
        raise RunDirError(f"--output-dir {run_dir.path} is inside --data-dir {cfg.data_dir}: the next run "
                          "would read its files as a class; choose a folder outside the data")


def check_output_contents(cfg: TrainConfig, run_dir: RunDir) -> None:
    """With the folder locked: refuse foreign files, and results unless resuming or overwriting them."""
    own_log = own_log_file(cfg)
    run_dir.check_only_run_files(keep=own_log)
    if run_dir.holds_results(keep=own_log) and not (cfg.overwrite or cfg.resume):
        raise RunDirError(f"--output-dir {run_dir.path} already holds results; continue them with --resume, "
                          "replace them with --overwrite, or choose another folder")


def own_log_file(cfg: TrainConfig) -> Path | None:
    return Path(cfg.log_file).resolve() if cfg.log_file else None
