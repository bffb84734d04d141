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

from data.dicom import DicomOptions
from data.folder import DataError, ImageFolder, display_path
from data.folds import (Fold, check_class_sizes, check_group_sizes, grouped_holdout, make_folds, make_holdout_split,
                        with_inner_split)
from data.images import DecodedImages, ImageCache, build_image_cache, duplicate_groups
from data.leakage import near_duplicates_across_folds
from data.pixels import describe_failures
from models.clip_model import CLIPClassifier
from models.image_encoders import random_init_note
from models.text_checks import text_warnings
from training.checkpoint_format import SharedWeights, store_frozen_towers
from training.config import ConfigError, TrainConfig
from training.distributed import Distributed
from utils.io import read_json, write_json
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
    # Likewise the image tower's (a Chinese-CLIP config; empty for the other encoders).
    image_files: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    # The frozen towers' weights in the run's frozen_towers.pth (set when the run files are written).
    shared_weights: SharedWeights | None = None
    # This invocation (a segment of the run: first start or a resumption), for wall_time_s.
    segment_started: str = field(default_factory=lambda: dt.datetime.now().astimezone().isoformat())
    segment_clock: float = field(default_factory=time.perf_counter)
    # This process's place under torchrun, and the model it trains: wrapped in DistributedDataParallel
    # when there are several processes (``model`` is always the plain model: evaluation, checkpoints).
    processes: Distributed = field(default_factory=Distributed)
    network: torch.nn.Module | None = field(default=None, repr=False)
    # --lora-rank: the adapters' rank and base, recorded in every checkpoint (training.lora.lora_record).
    adapters: dict[str, Any] = field(default_factory=dict)
    # Seconds of the training epochs timed so far, any fold: what utils.progress.time_left estimates from.
    epoch_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.network is None:
            self.network = self.model

    @property
    def labels(self) -> list[int]:
        return self.images.labels

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What every checkpoint carries besides the weights, so predict.py needs nothing else."""
        return {"config": self.cfg.to_dict(), "class_names": list(self.images.class_names),
                "class_texts": self.class_texts, "text_encoder_files": self.text_files,
                "image_encoder_files": self.image_files, **self.adapters}

    def record_time(self) -> None:
        """Add this segment's time so far to the run's total (kept across interruptions)."""
        self.run_dir.record_time(self.segment_started, time.perf_counter() - self.segment_clock)

    def display_path(self, index: int) -> str:
        return display_path(self.images.paths[index], self.images.root)


def decode_images(cfg: TrainConfig, images: ImageFolder) -> tuple[DecodedImages, ImageFolder]:
    """Decode every image once; unreadable files are skipped with a warning (fatal with --strict-images)."""
    decoded = build_image_cache(images.paths, cfg.img_size, cfg.cache_mb, threads=max(1, cfg.num_workers),
                                dicom=DicomOptions(cfg.dicom_window, cfg.dicom_first_frame))
    if decoded.failures:
        listed = describe_failures(decoded.failures)
        if cfg.strict_images:
            raise DataError(f"--strict-images: {len(decoded.failures)} unreadable image(s): {listed}")
        log.warning("Skipping %d unreadable image(s): %s", len(decoded.failures), listed)
        failed = {path for path, _ in decoded.failures}
        images = images.subset([i for i, p in enumerate(images.paths) if p not in failed])
    warn_duplicates(images, decoded.hashes)
    return decoded, images


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


def warn_leakage(cfg: TrainConfig, images: ImageFolder, decoded: DecodedImages, folds: Sequence[Fold],
                 limit: int = 10) -> None:
    """Warn about near-duplicate images that one fold trains on and validates (the same patient, most
    likely); --leakage-check off skips it."""
    if cfg.leakage_check == "off":
        return
    pairs = near_duplicates_across_folds(decoded.phashes, decoded.hashes, folds)
    if not pairs:
        return
    listed = "; ".join(f"{display_path(images.paths[p.first], images.root)} ~ "
                       f"{display_path(images.paths[p.second], images.root)} (fold {', '.join(map(str, p.folds))})"
                       for p in pairs[:limit])
    more = f" and {len(pairs) - limit} more" if len(pairs) > limit else ""
    hint = ("each pair is in two groups: check that one patient does not have two IDs" if images.groups is not None
            else "group them (a CSV group column, --groups-file, --group-regex or --group-by dicom)")
    log.warning("Possible leakage: %d pair(s) of near-duplicate images are on the training and validation "
                "sides of a fold, which inflates the score if they show the same patient: %s%s; %s",
                len(pairs), listed, more, hint)


def warn_model_choices(cfg: TrainConfig, model: CLIPClassifier, class_names: Sequence[str]) -> None:
    """One line each, before training: an image encoder starting from random weights unasked, a
    description the text encoder truncates, descriptions in a script its tokenizer does not cover."""
    note = random_init_note(cfg.image_encoder, cfg.image_weights)
    if note is not None:
        log.warning("%s", note)
    for line in text_warnings(model.text_encoder, cfg.text_encoder, class_names, model.class_texts):
        log.warning("%s", line)


@dataclass(frozen=True)
class DataPlan:
    """Which images train, validate and test: the held-out test set, then the folds of the rest."""

    dev_idx: list[int]
    test_idx: list[int]
    folds: list[Fold]


def plan_data(cfg: TrainConfig, images: ImageFolder) -> DataPlan:
    dev_idx, test_idx = split_off_test(cfg, images)
    return DataPlan(dev_idx, test_idx, plan_folds(cfg, images, dev_idx))


def split_off_test(cfg: TrainConfig, images: ImageFolder) -> tuple[list[int], list[int]]:
    """Development and test indices; the test set is stratified, by whole groups when known, and never
    seen by any fold."""
    everything = list(range(len(images.labels)))
    if cfg.test_fraction == 0:
        return everything, []
    check_class_sizes(images.labels, images.class_names, 2)
    if images.groups is not None:
        check_group_sizes(images.labels, images.groups, images.class_names, 2)
        return grouped_holdout(images.labels, images.groups, cfg.test_fraction, cfg.random_state)
    dev, test = train_test_split(everything, test_size=cfg.test_fraction, stratify=images.labels,
                                 random_state=cfg.random_state)
    return sorted(dev), sorted(test)


def plan_folds(cfg: TrainConfig, images: ImageFolder, dev_idx: list[int]) -> list[Fold]:
    dev_labels = [images.labels[i] for i in dev_idx]
    dev_groups = None if images.groups is None else [images.groups[i] for i in dev_idx]
    if cfg.use_cv:
        check_class_sizes(dev_labels, images.class_names, cfg.n_splits)
        if dev_groups is not None:
            check_group_sizes(dev_labels, dev_groups, images.class_names, cfg.n_splits)
        local = make_folds(dev_labels, cfg.n_splits, cfg.random_state, dev_groups)
    else:
        local = make_holdout_split(dev_labels, images.class_names, cfg.val_fraction, cfg.random_state, dev_groups)
    folds = [Fold(f.number, [dev_idx[i] for i in f.train_idx], [dev_idx[i] for i in f.val_idx]) for f in local]
    if cfg.select_on == "inner":
        folds = [with_inner_split(f, images.labels, images.class_names, cfg.inner_val_fraction, cfg.random_state,
                                  images.groups) for f in folds]
    smallest = min(len(f.fit_idx) for f in folds)
    if cfg.batch_size > smallest:
        raise DataError(f"--batch-size {cfg.batch_size} is larger than the smallest training fold "
                        f"({smallest} images{' after its inner validation split' if cfg.select_on == 'inner' else ''}); "
                        "lower --batch-size")
    return folds


def folds_document(cfg: TrainConfig, images: ImageFolder, folds: list[Fold], test_idx: list[int]) -> dict[str, Any]:
    def paths(indices: Sequence[int]) -> list[str]:
        return [display_path(images.paths[i], images.root) for i in indices]

    document = {"mode": "cv" if cfg.use_cv else "holdout", "random_state": cfg.random_state,
                "class_names": images.class_names, "test": paths(test_idx),
                "folds": [{"fold": f.number, "train": paths(f.train_idx), "val": paths(f.val_idx),
                           # The part of "train" that chose the epoch (--select-on inner) and was not trained on.
                           **({"inner_val": paths(f.inner_val_idx)} if f.inner_val_idx else {})} for f in folds]}
    if images.groups is not None:
        document["groups"] = dict(zip(paths(range(len(images.paths))), images.groups))
    return document


def write_run_files(run: Run) -> None:
    """config.json, folds.json and the frozen towers' weights (frozen_towers.pth); a resumed run keeps its
    own (written again only if a crash lost them).

    ``--overwrite`` first deletes the earlier run's files, and only those (RunDir.clear).
    """
    if run.cfg.overwrite:
        run.run_dir.clear(keep=own_log_file(run.cfg))
    if not (run.cfg.resume and run.run_dir.config.is_file()):
        write_json(run.run_dir.config, run.cfg.to_dict())
    if not (run.cfg.resume and run.run_dir.folds.is_file()):
        write_json(run.run_dir.folds, folds_document(run.cfg, run.images, run.folds, run.test_idx))
    run.shared_weights = store_frozen_towers(run.run_dir, run.model, run.initial_state)


def check_resumable(run: Run) -> None:
    """A resumed run must see the same images in the same folds."""
    saved = read_json(run.run_dir.folds, "folds file of the run")
    if saved != folds_document(run.cfg, run.images, run.folds, run.test_idx):
        if run.cfg.select_on == "inner" and not has_inner_split(saved):
            # A run begun before --select-on existed chose its epochs on the fold: it resumes that way.
            raise ConfigError(f"--resume refused: the run in {run.run_dir.path} has no inner selection split "
                              "(it was started before --select-on and chooses epochs on each fold); resume it "
                              "with --select-on fold, or start it again with --overwrite")
        raise ConfigError(f"--resume refused: the images of {data_source(run.cfg)} changed since the run in "
                          f"{run.run_dir.path} started (its folds.json no longer matches)")



def has_inner_split(folds_json: Any) -> bool:
    folds = folds_json.get("folds") if isinstance(folds_json, dict) else None
    return isinstance(folds, list) and any(isinstance(f, dict) and "inner_val" in f for f in folds)


def data_source(cfg: TrainConfig) -> str:
    """The data as the user named it: ``--data-dir X`` or ``--data-csv X``."""
    return f"--data-dir {cfg.data_dir}" if cfg.data_dir else f"--data-csv {cfg.data_csv}"


def check_output_location(cfg: TrainConfig, run_dir: RunDir, images: ImageFolder | None = None) -> None:
    """Refuse an output folder that would mix with the data (before anything is written). A data folder
    is read whole, so the output may be neither it, nor above it, nor inside it; a CSV run reads only
    the files the CSV lists (``images``, once scanned), so its output may be anywhere that is not one
    of them, nor the CSV, nor a folder holding any of them."""
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise RunDirError(f"--output-dir {run_dir.path} exists and is not a folder")
    output = run_dir.path.resolve()
    if cfg.data_dir:
        data = Path(cfg.data_dir).resolve()
        if output == data or output in data.parents:
            raise RunDirError(f"--output-dir {run_dir.path} holds the data ({data_source(cfg)}); a run writes only "
                              "into a folder of its own: choose one outside the data")
        if data in output.parents:
            raise RunDirError(f"--output-dir {run_dir.path} is inside {data_source(cfg)}: the next run would read "
                              "its files as data; choose a folder outside the data")
        return
    for file, what in [(Path(cfg.data_csv), "the --data-csv file itself"),
                       *((p, "an image listed in --data-csv") for p in (images.paths if images else []))]:
        resolved = file.resolve()
        if output == resolved or output in resolved.parents:
            where = "is" if output == resolved else "holds"
            raise RunDirError(f"--output-dir {run_dir.path} {where} {file}, {what}; a run writes only into a folder "
                              "of its own: choose one that holds none of the data")


def check_output_contents(cfg: TrainConfig, run_dir: RunDir) -> None:
    """With the folder locked: refuse foreign files, and results unless resuming or overwriting them."""
    own_log = own_log_file(cfg)
    run_dir.check_only_run_files(keep=own_log)
    if run_dir.holds_results(keep=own_log) and not (cfg.overwrite or cfg.resume):
        run_dir.refuse_if_held_by_another()  # a training still writing them: name it
        raise RunDirError(f"--output-dir {run_dir.path} already holds results; continue them with --resume, "
                          "replace them with --overwrite, or choose another folder")


def own_log_file(cfg: TrainConfig) -> Path | None:
    return Path(cfg.log_file).resolve() if cfg.log_file else None
