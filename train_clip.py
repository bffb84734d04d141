#!/usr/bin/env python3
"""train_clip: fine-tune a CLIP-style image-text model on a folder-per-class dataset with K-fold CV.

The story of a run (DESIGN.md §1): configuration → data scan and class texts → folds →
for each fold: zero-shot baseline, train, evaluate each epoch, keep the best and latest
checkpoints → ``cv_summary.json`` (→ held-out test ensemble). ``main`` stays thin; the steps
are small functions below.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from data.folder import DataError, ImageFolder, scan_image_folder
from data.folds import Fold, check_class_sizes, make_folds, make_holdout_split
from data.images import CachedImageDataset, ImageCache, build_image_cache, describe_failures, duplicate_groups
from data.sampling import SeededSampler, weighted_sampler
from data.texts import load_class_texts
from data.transforms import ToModelInput, build_augmentation
from models.clip_model import CLIPClassifier, build_clip_model
from models.image_encoders import resolve_image_encoder
from models.loss import class_contrastive_loss
from models.names import UnknownEncoderError, WeightsNotFoundError
from models.registry_table import format_encoder_table
from models.text_encoders import resolve_text_encoder
from reporting.metrics import classification_metrics, mean_and_std, scalar_metrics
from reporting.report import report_from_run_dir
from reporting.summary import format_summary_table
from training.config import ConfigError, TrainConfig, config_from_args, run_name
from utils.device import autocast, mixed_precision_dtype, to_device
from utils.io import (CheckpointError, WriteError, load_checkpoint, read_json, save_checkpoint, write_csv,
                      write_json)
from utils.logging_setup import setup_logging
from utils.seeding import seed_everything, seed_worker

log = logging.getLogger("train_clip")

CHECKPOINT_FORMAT = "train_clip/1"
# What checkpoint_latest.pth adds to the model while its fold trains, for --resume. A finished fold
# drops it: AdamW's two moments alone weigh twice the trainable parameters, on every fold of every run.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "fold_state", "rng")
LATEST_KEYS = ("format", "model", "epoch", *TRAINING_STATE_KEYS)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


USER_ERRORS = (ConfigError, DataError, UnknownEncoderError, WeightsNotFoundError, CheckpointError, WriteError,
               TrainingError)


@dataclass
class Run:
    """Everything a run's folds share: decided once, before any fold starts."""

    cfg: TrainConfig
    output_dir: Path
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

    @property
    def labels(self) -> list[int]:
        return self.images.labels


@dataclass
class FoldState:
    """What evolves during a fold; saved in ``checkpoint_latest.pth`` so a fold can resume."""

    epoch: int = -1  # last finished epoch; 0 is the zero-shot evaluation before training
    best_value: float = math.nan
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_probs: list[list[float]] = field(default_factory=list)  # validation probabilities, fold order
    epochs_since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FoldResult:
    number: int
    best_epoch: int
    metrics: dict[str, Any]
    val_idx: list[int]
    val_probs: np.ndarray


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------
def train_one_epoch(model: CLIPClassifier, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    device: torch.device, amp_dtype: torch.dtype | None, symmetric: bool,
                    epoch: int, description: str = "") -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss, the last learning rate and AMP-skipped steps."""
    model.train()
    total, count, skipped = 0.0, 0, 0
    for step, (images, labels, _) in enumerate(tqdm(loader, desc=description, leave=False, disable=None), 1):
        images, labels = to_device(images, device), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            image_emb, class_emb, scale = model(images)
        loss = class_contrastive_loss(image_emb, class_emb, labels, scale, symmetric=symmetric)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss ({loss.item()}) at epoch {epoch}, step {step}; "
                                "the fold stopped and its last checkpoint is kept; lower --learning-rate "
                                "or try --no-amp")
        optimizer.zero_grad(set_to_none=True)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scale_before is not None and scaler.get_scale() < scale_before:
            skipped += 1  # the scaler found inf/NaN gradients and skipped this step
        scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return {"train_loss": total / max(count, 1), "lr": optimizer.param_groups[0]["lr"],
            "amp_skipped_steps": skipped}


@torch.no_grad()
def evaluate(model: CLIPClassifier, loader: DataLoader, device: torch.device,
             amp_dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Class probabilities, true labels and dataset indices of ``loader``, and the mean cross-entropy."""
    model.eval()
    class_emb = model.encode_classes()
    scale = model.scale()
    probs, labels, indices, loss_sum = [], [], [], 0.0
    for images, batch_labels, batch_indices in loader:
        with autocast(device, amp_dtype):
            image_emb = model.encode_images(to_device(images, device))
        logits = CLIPClassifier.logits(image_emb, class_emb, scale)
        loss_sum += F.cross_entropy(logits, batch_labels.to(device), reduction="sum").item()
        probs.append(logits.softmax(dim=1).cpu().numpy())
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    n = sum(len(x) for x in labels)
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(indices), loss_sum / max(n, 1)


def parameter_groups(model: CLIPClassifier, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: tower-specific learning rates; no weight decay on biases, norms and the scale."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("image_encoder."):
            mult = cfg.image_lr_mult
        elif name.startswith("text_encoder."):
            mult = cfg.text_lr_mult
        else:
            mult = 1.0
        decay = parameter.ndim >= 2 and name != "logit_scale"
        groups.setdefault((mult, decay), []).append(parameter)
    return [{"params": params, "lr": cfg.learning_rate * mult,
             "weight_decay": cfg.weight_decay if decay else 0.0}
            for (mult, decay), params in groups.items()]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up to 1, then cosine decay to 0."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def largest_fitting_batch(try_batch: Callable[[int], None], start: int) -> int:
    """Halve from ``start`` until ``try_batch(n)`` runs without CUDA running out of memory; 0 if none."""
    size = start
    while size >= 1:
        try:
            try_batch(size)
            return size
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size //= 2
    return 0


def out_of_memory_error(run: Run) -> TrainingError:
    """Probe which batch size fits, and say so."""
    cfg, model = run.cfg, run.model
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()

    def try_batch(size: int) -> None:
        images = torch.randn(size, 3, cfg.img_size, cfg.img_size, device=run.device)
        with autocast(run.device, run.amp_dtype):
            image_emb, class_emb, scale = model(to_device(images, run.device))
        labels = torch.zeros(size, dtype=torch.long, device=run.device)
        class_contrastive_loss(image_emb, class_emb, labels, scale).backward()
        model.zero_grad(set_to_none=True)

    fits = largest_fitting_batch(try_batch, cfg.batch_size // 2)
    advice = (f"a batch of {fits} fits: rerun with --batch-size {fits}" if fits
              else "not even a batch of 1 fits: use a smaller --img-size or encoder")
    return TrainingError(f"CUDA out of memory at --batch-size {cfg.batch_size} on {run.device}; {advice}")


# ---------------------------------------------------------------------------------------------
# Random-number state (saved with each latest checkpoint so a resumed fold continues exactly)
# ---------------------------------------------------------------------------------------------
def capture_rng(sampler_generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampler": sampler_generator.get_state()}


def restore_rng(state: dict[str, Any], sampler_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler_generator.set_state(state["sampler"])


# ---------------------------------------------------------------------------------------------
# A fold
# ---------------------------------------------------------------------------------------------
def make_loaders(run: Run, fold: Fold, generator: torch.Generator) -> tuple[DataLoader, DataLoader, SeededSampler]:
    """Training loader (shuffled or class-weighted, seeded augmentation) and validation loader."""
    cfg = run.cfg
    to_input = ToModelInput()
    train_set = CachedImageDataset(run.cache, fold.train_idx, run.labels,
                                   build_augmentation(cfg.augmentation, cfg.img_size), to_input)
    val_set = CachedImageDataset(run.cache, fold.val_idx, run.labels, None, to_input)
    if cfg.use_weighted_sampling:
        base = weighted_sampler([run.labels[i] for i in fold.train_idx], len(run.images.class_names),
                                cfg.weight_method, cfg.weight_smooth_factor, generator)
    else:
        base = RandomSampler(train_set, generator=generator)
    sampler = SeededSampler(base, cfg.seed + fold.number)
    common = dict(num_workers=cfg.num_workers, pin_memory=run.device.type == "cuda",
                  persistent_workers=cfg.num_workers > 0, worker_init_fn=seed_worker)
    # drop_last: a last batch of one image would break BatchNorm and add noise.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                              drop_last=len(train_set) > cfg.batch_size,
                              generator=torch.Generator().manual_seed(cfg.seed), **common)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size * 2, shuffle=False, **common)
    return train_loader, val_loader, sampler


def checkpoint_state(run: Run, fold: Fold, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """The part every checkpoint shares: plain values and tensors only (loads with ``weights_only``)."""
    return {"format": CHECKPOINT_FORMAT, "model": run.model.state_dict(), "fold": fold.number, "epoch": epoch,
            "metrics": metrics, "config": run.cfg.to_dict(), "class_names": list(run.images.class_names),
            "class_texts": run.class_texts, "text_encoder_files": run.text_files}


def is_better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


def record_epoch(run: Run, fold: Fold, state: FoldState, epoch: int, stats: dict[str, float],
                 val_loader: DataLoader, started: float, training: dict[str, Any], writer: Any = None) -> None:
    """Validate, update history and best-so-far, write history and checkpoints, log one line."""
    cfg = run.cfg
    fold_dir = run.output_dir / f"fold_{fold.number}"
    probs, labels, indices, val_loss = evaluate(run.model, val_loader, run.device, run.amp_dtype)
    metrics = classification_metrics(labels, probs)
    row = {"epoch": epoch, **stats, "seconds": round(time.perf_counter() - started, 3), "val_loss": val_loss,
           **scalar_metrics(metrics),
           # Text-tower runs since the fold (or its resumption) began: stays 1 with --freeze-text.
           "text_encoder_calls": run.model.text_encoder_calls}
    state.history.append(row)
    state.epoch = epoch
    # The first evaluation is the best so far even when the metric is undefined (NaN) there.
    improved = state.best_epoch < 0 or is_better(metrics[cfg.monitor], state.best_value)
    if improved:
        state.best_value, state.best_epoch, state.best_metrics = metrics[cfg.monitor], epoch, metrics
        state.best_probs = probs[np.argsort(indices)].tolist()  # fold.val_idx is sorted too
        state.epochs_since_best = 0
    else:
        state.epochs_since_best += 1
    write_json(fold_dir / "history.json", state.history)
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, epoch)
        writer.flush()
    if improved and cfg.save_best:
        save_checkpoint(fold_dir / "checkpoint_best.pth", checkpoint_state(run, fold, epoch, scalar_metrics(metrics)))
    rng = capture_rng(training.pop("sampler_generator"))
    save_checkpoint(fold_dir / "checkpoint_latest.pth", {
        **checkpoint_state(run, fold, epoch, scalar_metrics(metrics)), **training, "fold_state": vars(state),
        "rng": rng})
    log.info("fold %d epoch %3d/%d  loss %s  lr %s  acc %.4f  bal_acc %.4f  macro_f1 %.4f  %.1fs%s",
             fold.number, epoch, cfg.epochs, f"{stats['train_loss']:.4f}" if stats else "   -  ",
             f"{stats['lr']:.2e}" if stats else "   -   ", metrics["accuracy"], metrics["balanced_accuracy"],
             metrics["macro_f1"], row["seconds"], "  *best*" if improved else "")


def tensorboard_writer(run: Run, fold: Fold) -> Any:
    """A TensorBoard writer for the fold with --tensorboard (the package was checked in prepare_run)."""
    if not run.cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.output_dir / "tensorboard" / f"fold_{fold.number}"))


def fold_result_path(run: Run, fold: Fold) -> Path:
    return run.output_dir / f"fold_{fold.number}" / "result.json"


def load_fold_result(run: Run, fold: Fold) -> FoldResult:
    saved = read_json(fold_result_path(run, fold), "fold result")
    return FoldResult(fold.number, saved["best_epoch"], saved["metrics"], list(fold.val_idx),
                      np.asarray(saved["val_probs"], dtype=np.float64))


def drop_training_state(fold_dir: Path) -> None:
    """Reduce a finished fold's ``checkpoint_latest.pth`` to the last epoch's model and metadata."""
    latest = fold_dir / "checkpoint_latest.pth"
    if not latest.is_file():
        return
    saved = load_checkpoint(latest)
    if any(key in saved for key in TRAINING_STATE_KEYS):
        save_checkpoint(latest, {key: value for key, value in saved.items() if key not in TRAINING_STATE_KEYS})


def run_fold(run: Run, fold: Fold) -> FoldResult:
    cfg, model, device = run.cfg, run.model, run.device
    fold_dir = run.output_dir / f"fold_{fold.number}"
    if cfg.resume and fold_result_path(run, fold).is_file():
        log.info("Fold %d finished earlier: keeping its results", fold.number)
        drop_training_state(fold_dir)  # in case the earlier run stopped between the two writes
        return load_fold_result(run, fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + fold.number)
    model.load_state_dict(run.initial_state)
    model.reset_text_cache()
    generator = torch.Generator().manual_seed(cfg.seed + fold.number)
    train_loader, val_loader, sampler = make_loaders(run, fold, generator)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.learning_rate)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    state = FoldState()
    writer = tensorboard_writer(run, fold)

    def training_state() -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "sampler_generator": generator}

    latest = fold_dir / "checkpoint_latest.pth"
    if cfg.resume and latest.is_file():
        saved = load_checkpoint(latest, LATEST_KEYS)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        state = FoldState(**saved["fold_state"])
        restore_rng(saved["rng"], generator)
        log.info("Fold %d: resuming after epoch %d", fold.number, state.epoch)
    else:
        log.info("Fold %d/%d: %d training, %d validation images, %d steps per epoch; epoch 0 is the "
                 "zero-shot baseline (no training)", fold.number, len(run.folds), len(fold.train_idx),
                 len(fold.val_idx), steps_per_epoch)
        record_epoch(run, fold, state, 0, {}, val_loader, time.perf_counter(), training_state(), writer)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if cfg.patience and state.epochs_since_best >= cfg.patience:
            log.info("Fold %d: early stop, no improvement of %s for %d epochs", fold.number, cfg.monitor,
                     cfg.patience)
            break
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, device, run.amp_dtype,
                                cfg.loss == "symmetric", epoch,
                                description=f"fold {fold.number} epoch {epoch}/{cfg.epochs}")
        record_epoch(run, fold, state, epoch, stats, val_loader, started, training_state(), writer)
    if writer is not None:
        writer.close()
    write_json(fold_result_path(run, fold), {"fold": fold.number, "best_epoch": state.best_epoch,
                                             "metrics": state.best_metrics, "val_probs": state.best_probs})
    # Only after result.json: until it exists, --resume needs the training state.
    drop_training_state(fold_dir)
    log.info("Fold %d done: best epoch %d, %s %.4f", fold.number, state.best_epoch, cfg.monitor, state.best_value)
    return FoldResult(fold.number, state.best_epoch, state.best_metrics, list(fold.val_idx),
                      np.asarray(state.best_probs, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def select_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    if not torch.cuda.is_available():
        log.info("CUDA is not available: training on the CPU (mixed precision off)")
        return torch.device("cpu"), None
    count = torch.cuda.device_count()
    if cfg.gpu_id >= count:
        raise ConfigError(f"--gpu-id {cfg.gpu_id}: this machine has {count} CUDA device(s) (0..{count - 1})")
    device = torch.device("cuda", cfg.gpu_id)
    torch.cuda.set_device(device)
    amp_dtype = mixed_precision_dtype(device, cfg.amp)
    log.info("Training on %s (%s), mixed precision: %s", device, torch.cuda.get_device_name(device),
             amp_dtype or "off")
    return device, amp_dtype


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def own_log_file(cfg: TrainConfig) -> Path | None:
    return Path(cfg.log_file).resolve() if cfg.log_file else None


def check_output_dir(cfg: TrainConfig, output_dir: Path) -> None:
    """Refuse to mix a new run into an old one; decided before anything is written.

    The run's own log file may lie inside ``output_dir``: main has already opened it, so it is no result.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {output_dir} exists and is not a folder")
    own_log = own_log_file(cfg)
    holds_results = output_dir.is_dir() and any(
        not p.is_dir() and p.resolve() != own_log for p in output_dir.rglob("*"))
    if holds_results and not (cfg.overwrite or cfg.resume):
        raise ConfigError(f"--output-dir {output_dir} already holds results; continue them with --resume, "
                          "replace them with --overwrite, or choose another folder")


def clear_output_dir(output_dir: Path, keep: Path | None = None) -> None:
    """Delete everything in ``output_dir`` except the file ``keep`` (the log this run is writing)."""
    for child in output_dir.iterdir():
        real_dir = child.is_dir() and not child.is_symlink()
        if keep is not None and child.resolve() == keep:
            continue
        if keep is not None and real_dir and child.resolve() in keep.parents:
            clear_output_dir(child, keep)
            continue
        shutil.rmtree(child) if real_dir else child.unlink()


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


def relative_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def folds_document(cfg: TrainConfig, images: ImageFolder, folds: list[Fold], test_idx: list[int]) -> dict[str, Any]:
    def paths(indices: Sequence[int]) -> list[str]:
        return [relative_path(images.paths[i], images.root) for i in indices]

    return {"mode": "cv" if cfg.use_cv else "holdout", "random_state": cfg.random_state,
            "class_names": images.class_names, "test": paths(test_idx),
            "folds": [{"fold": f.number, "train": paths(f.train_idx), "val": paths(f.val_idx)} for f in folds]}


def check_resumable(run: Run) -> None:
    """A resumed run must see the same images in the same folds."""
    saved = read_json(run.output_dir / "folds.json", "folds file of the run")
    if saved != folds_document(run.cfg, run.images, run.folds, run.test_idx):
        raise ConfigError(f"--resume refused: the images under {run.cfg.data_dir} changed since the run in "
                          f"{run.output_dir} started (its folds.json no longer matches)")


def prepare_run(cfg: TrainConfig) -> Run:
    """Every check that can fail, before a single file is written."""
    resolve_image_encoder(cfg.image_encoder, cfg.image_weights)
    resolve_text_encoder(cfg.text_encoder, cfg.text_weights)
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")
    images = scan_image_folder(cfg.data_dir)
    class_texts = load_class_texts(images.class_names, cfg.class_texts_file, cfg.text_template)
    output_dir = cfg.resolved_output_dir()
    check_output_dir(cfg, output_dir)
    # Planned now so that a class too small to split fails before the model is built.
    dev_idx, test_idx = split_off_test(cfg, images)
    folds = plan_folds(cfg, images, dev_idx)
    if not cfg.use_cv:
        log.info("Cross-validation is off (--use-cv not given): one stratified split with %.0f%% for "
                 "validation", 100 * cfg.val_fraction)
    log.info("Data: %d images in %d classes (%s)", len(images.paths), len(images.class_names),
             ", ".join(f"{name}: {n}" for name, n in zip(images.class_names, images.class_counts())))
    device, amp_dtype = select_device(cfg)
    configure_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    model = build_clip_model(cfg.image_encoder, cfg.text_encoder, cfg.embed_dim, cfg.temperature,
                             class_texts, freeze_image=cfg.freeze_image, freeze_text=cfg.freeze_text,
                             img_size=cfg.img_size, image_weights=cfg.image_weights,
                             text_weights=cfg.text_weights)
    initial_state = copy.deepcopy(model.state_dict())
    model.to(device)
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    cache, decoded = decode_images(cfg, images)
    if decoded is not images:  # unreadable images were dropped: split what is left
        images = decoded
        dev_idx, test_idx = split_off_test(cfg, images)
        folds = plan_folds(cfg, images, dev_idx)
    run = Run(cfg, output_dir, device, amp_dtype, images, cache, class_texts, folds, test_idx, model, initial_state,
              model.text_encoder.saved_files())
    if cfg.resume and (output_dir / "folds.json").is_file():
        check_resumable(run)
    return run


def write_run_files(run: Run) -> None:
    """config.json and folds.json; a resumed run keeps its own (written again only if a crash lost them)."""
    if run.cfg.overwrite and run.output_dir.is_dir():
        clear_output_dir(run.output_dir, own_log_file(run.cfg))
    config_file, folds_file = run.output_dir / "config.json", run.output_dir / "folds.json"
    if not (run.cfg.resume and config_file.is_file()):
        write_json(config_file, run.cfg.to_dict())
    if not (run.cfg.resume and folds_file.is_file()):
        write_json(folds_file, folds_document(run.cfg, run.images, run.folds, run.test_idx))


def summarise(run: Run, results: Sequence[FoldResult], wall_time: float) -> dict[str, Any]:
    names = run.images.class_names
    oof_idx = np.concatenate([r.val_idx for r in results])
    oof_probs = np.concatenate([r.val_probs for r in results])
    fold_of = np.concatenate([[r.number] * len(r.val_idx) for r in results])
    order = np.argsort(oof_idx)
    write_csv(run.output_dir / "oof_predictions.csv",
              ["path", "fold", "true_class", "predicted_class"] + [f"prob_{n}" for n in names],
              [[relative_path(run.images.paths[oof_idx[j]], run.images.root), int(fold_of[j]),
                names[run.labels[oof_idx[j]]], names[int(oof_probs[j].argmax())]]
               + [f"{p:.6f}" for p in oof_probs[j]] for j in order])
    mean, std = mean_and_std([scalar_metrics(r.metrics) for r in results])
    summary = {
        "mode": "cv" if run.cfg.use_cv else "holdout",
        "n_splits": len(results),
        "monitor": run.cfg.monitor,
        "image_encoder": run.cfg.image_encoder,
        "text_encoder": run.cfg.text_encoder,
        "class_names": names,
        "folds": [{"fold": r.number, "best_epoch": r.best_epoch, "metrics": r.metrics} for r in results],
        "mean": mean,
        "std": std,
        "oof": classification_metrics(np.asarray(run.labels)[oof_idx], oof_probs),
        "wall_time_s": round(wall_time, 1),
    }
    return summary


def evaluate_test_ensemble(run: Run, results: Sequence[FoldResult]) -> dict[str, Any]:
    """Mean probabilities of the best model of every fold on the held-out test set."""
    cfg = run.cfg
    loader = DataLoader(CachedImageDataset(run.cache, run.test_idx, run.labels, None, ToModelInput()),
                        batch_size=cfg.batch_size * 2, num_workers=cfg.num_workers)
    probs_sum, labels = None, None
    for result in results:
        saved = load_checkpoint(run.output_dir / f"fold_{result.number}" / "checkpoint_best.pth", ("model",))
        run.model.load_state_dict(saved["model"])
        run.model.reset_text_cache()
        probs, labels, indices, _ = evaluate(run.model, loader, run.device, run.amp_dtype)
        probs_sum = probs if probs_sum is None else probs_sum + probs
    probs = probs_sum / len(results)
    names = run.images.class_names
    write_csv(run.output_dir / "test_predictions.csv",
              ["path", "true_class", "predicted_class"] + [f"prob_{n}" for n in names],
              [[relative_path(run.images.paths[i], run.images.root), names[run.labels[i]],
                names[int(p.argmax())]] + [f"{x:.6f}" for x in p] for i, p in zip(indices, probs)])
    metrics = classification_metrics(labels, probs)
    write_json(run.output_dir / "test_metrics.json", {
        "n_images": len(run.test_idx), "ensemble_of_folds": [r.number for r in results],
        "class_names": names, "metrics": metrics})
    log.info("Held-out test set (%d images, ensemble of %d fold models): accuracy %.4f, balanced accuracy "
             "%.4f, macro-F1 %.4f", len(run.test_idx), len(results), metrics["accuracy"],
             metrics["balanced_accuracy"], metrics["macro_f1"])
    return metrics


def run_training(run: Run) -> dict[str, Any]:
    started = time.perf_counter()
    write_run_files(run)
    try:
        results = [run_fold(run, fold) for fold in run.folds]
    except torch.OutOfMemoryError:  # in training or evaluation, any fold
        raise out_of_memory_error(run) from None
    summary = summarise(run, results, time.perf_counter() - started)
    if run.test_idx:
        summary["test"] = evaluate_test_ensemble(run, results)
    write_json(run.output_dir / "cv_summary.json", summary)
    log.info("Cross-validation summary (%s):\n%s", run.output_dir / "cv_summary.json",
             format_summary_table(summary))
    write_report_files(run.output_dir)
    return summary


def write_report_files(output_dir: Path) -> None:
    """Plots and report.md; a failure here is reported but does not undo the finished results."""
    try:
        log.info("Report: %s", report_from_run_dir(output_dir))
    except (ValueError, OSError, RuntimeError) as exc:
        log.warning("Could not write the plots and report.md (results are complete; retry with "
                    "'python -m reporting.report %s'): %s", output_dir, exc)


def default_log_file(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    return Path("logs") / "clip_training" / f"{run_name(cfg.image_encoder, cfg.text_encoder)}_gpu{cfg.gpu_id}_{stamp}.log"


def main(argv: Sequence[str] | None = None) -> int:
    if "--list-encoders" in (sys.argv[1:] if argv is None else argv):  # needs no --data-dir
        print(format_encoder_table())
        return 0
    try:
        cfg = config_from_args(argv)
    except ValueError as exc:  # ConfigError, and read errors of the --config file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_file or default_log_file(cfg))
    try:
        run_training(prepare_run(cfg))
    except USER_ERRORS as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("Interrupted; continue with: python train_clip.py --resume --output-dir %s",
                  cfg.resolved_output_dir())
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
