#!/usr/bin/env python3
"""train_clip: fine-tune a CLIP-style image-text model on a folder-per-class dataset with K-fold CV.

The story of a run (DESIGN.md §1): configuration → data scan and class texts → folds →
for each fold: train, evaluate each epoch, keep the best and latest checkpoints →
``cv_summary.json``. ``main`` stays thin; the steps are small functions below.
"""
from __future__ import annotations

import copy
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.folder import DataError, ImageFolder, scan_image_folder
from data.folds import Fold, check_class_sizes, make_folds, make_holdout_split
from data.images import CachedImageDataset, ImageCache, build_image_cache
from data.sampling import weighted_sampler
from data.texts import load_class_texts
from data.transforms import ToModelInput, build_augmentation
from models.clip_model import CLIPClassifier, build_clip_model
from models.image_encoders import resolve_image_encoder
from models.loss import class_contrastive_loss
from models.names import UnknownEncoderError, WeightsNotFoundError
from models.registry_table import format_encoder_table
from models.text_encoders import resolve_text_encoder
from utils.config import ConfigError, TrainConfig, config_from_args, run_name
from utils.io import CheckpointError, save_checkpoint, write_csv, write_json
from utils.logging_setup import setup_logging
from utils.metrics import classification_metrics, mean_and_std, scalar_metrics
from utils.seeding import seed_everything, seed_worker

log = logging.getLogger("train_clip")

USER_ERRORS = (ConfigError, DataError, UnknownEncoderError, WeightsNotFoundError, CheckpointError)
CHECKPOINT_FORMAT = "train_clip/1"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Run:
    """Everything a run's folds share: decided once, before any fold starts."""

    cfg: TrainConfig
    output_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    images: ImageFolder
    cache: ImageCache
    labels: list[int]
    class_texts: list[list[str]]
    folds: list[Fold]
    model: CLIPClassifier
    initial_state: dict[str, torch.Tensor] = field(repr=False)


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
def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                          enabled=amp_dtype is not None)


def train_one_epoch(model: CLIPClassifier, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    device: torch.device, amp_dtype: torch.dtype | None, symmetric: bool,
                    epoch: int, description: str = "") -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss, the last learning rate and AMP-skipped steps."""
    model.train()
    total, count, skipped = 0.0, 0, 0
    channels_last = device.type == "cuda"
    for step, (images, labels, _) in enumerate(tqdm(loader, desc=description, leave=False, disable=None), 1):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            image_emb, class_emb, scale = model(images)
        loss = class_contrastive_loss(image_emb, class_emb, labels, scale, symmetric=symmetric)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at epoch {epoch}, step {step}; "
                                     "lower --learning-rate or try --no-amp")
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
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            image_emb = model.encode_images(images)
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


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier per step: linear warm-up to 1, then cosine decay to 0."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


# ---------------------------------------------------------------------------------------------
# A fold
# ---------------------------------------------------------------------------------------------
def make_loaders(run: Run, fold: Fold, generator: torch.Generator) -> tuple[DataLoader, DataLoader]:
    cfg = run.cfg
    to_input = ToModelInput()
    train_set = CachedImageDataset(run.cache, fold.train_idx, run.labels,
                                   build_augmentation(cfg.augmentation, cfg.img_size), to_input)
    val_set = CachedImageDataset(run.cache, fold.val_idx, run.labels, None, to_input)
    sampler = None
    if cfg.use_weighted_sampling:
        sampler = weighted_sampler([run.labels[i] for i in fold.train_idx], len(run.images.class_names),
                                   cfg.weight_method, cfg.weight_smooth_factor, generator)
    common = dict(num_workers=cfg.num_workers, pin_memory=run.device.type == "cuda",
                  persistent_workers=cfg.num_workers > 0, worker_init_fn=seed_worker)
    # drop_last: a last batch of one image would break BatchNorm and add noise.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                              shuffle=sampler is None, drop_last=len(train_set) > cfg.batch_size,
                              generator=generator, **common)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size * 2, shuffle=False, **common)
    return train_loader, val_loader


def checkpoint_state(run: Run, fold: Fold, epoch: int, metrics: dict[str, float],
                     best: tuple[float, int], training_state: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint of plain values and tensors only (loads with ``weights_only=True``)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": run.model.state_dict(),
        "fold": fold.number,
        "epoch": epoch,
        "metrics": metrics,
        "best_metric": best[0],
        "best_epoch": best[1],
        "config": run.cfg.to_dict(),
        "class_names": list(run.images.class_names),
        "class_texts": run.class_texts,
    }
    if training_state is not None:
        state.update(training_state)
    return state


def is_better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


def run_fold(run: Run, fold: Fold) -> FoldResult:
    cfg, model, device = run.cfg, run.model, run.device
    fold_dir = run.output_dir / f"fold_{fold.number}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + fold.number)
    model.load_state_dict(run.initial_state)
    model.reset_text_cache()
    generator = torch.Generator().manual_seed(cfg.seed + fold.number)
    train_loader, val_loader = make_loaders(run, fold, generator)

    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.learning_rate)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    log.info("Fold %d/%d: %d training, %d validation images, %d steps per epoch",
             fold.number, len(run.folds), len(fold.train_idx), len(fold.val_idx), steps_per_epoch)

    history: list[dict[str, Any]] = []
    best_value, best_epoch = math.nan, 0
    best_metrics: dict[str, Any] = {}
    best_probs = np.zeros((0, model.n_classes))
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, device, run.amp_dtype,
                                cfg.loss == "symmetric", epoch,
                                description=f"fold {fold.number} epoch {epoch}/{cfg.epochs}")
        probs, labels, indices, val_loss = evaluate(model, val_loader, device, run.amp_dtype)
        metrics = classification_metrics(labels, probs)
        row = {"epoch": epoch, **stats, "seconds": round(time.perf_counter() - started, 3),
               "val_loss": val_loss, **scalar_metrics(metrics),
               "text_encoder_calls": model.text_encoder_calls}  # since the fold began (1 if frozen)
        history.append(row)
        write_json(fold_dir / "history.json", history)

        improved = is_better(metrics[cfg.monitor], best_value)
        if improved:
            best_value, best_epoch, best_metrics = metrics[cfg.monitor], epoch, metrics
            best_probs = probs[np.argsort(indices)]  # align with the sorted fold.val_idx
            if cfg.save_best:
                save_checkpoint(fold_dir / "checkpoint_best.pth",
                                checkpoint_state(run, fold, epoch, scalar_metrics(metrics),
                                                 (best_value, best_epoch), None))
        save_checkpoint(fold_dir / "checkpoint_latest.pth", checkpoint_state(
            run, fold, epoch, scalar_metrics(metrics), (best_value, best_epoch),
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "history": history}))
        log.info("fold %d epoch %3d/%d  loss %.4f  lr %.2e  acc %.4f  bal_acc %.4f  macro_f1 %.4f  "
                 "%.1fs%s", fold.number, epoch, cfg.epochs, stats["train_loss"], stats["lr"],
                 metrics["accuracy"], metrics["balanced_accuracy"], metrics["macro_f1"], row["seconds"],
                 "  *best*" if improved else "")
    log.info("Fold %d done: best epoch %d, %s %.4f", fold.number, best_epoch, cfg.monitor, best_value)
    return FoldResult(fold.number, best_epoch, best_metrics, list(fold.val_idx), best_probs)


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
    if not cfg.amp:
        amp_dtype = None
    else:
        # bfloat16 needs no loss scaling; older GPUs fall back to float16 with a GradScaler.
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    log.info("Training on %s (%s), mixed precision: %s", device, torch.cuda.get_device_name(device),
             amp_dtype or "off")
    return device, amp_dtype


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one; decided before anything is written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"--output-dir {output_dir} already holds results; choose another folder or "
                              "pass --overwrite to replace them")


def clear_output_dir(output_dir: Path) -> None:
    for child in output_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def decode_images(cfg: TrainConfig, images: ImageFolder) -> tuple[ImageCache, list[int], ImageFolder]:
    """Decode every image once; unreadable files are skipped with a warning naming them."""
    cache, failures = build_image_cache(images.paths, cfg.img_size, cfg.cache_mb, threads=max(1, cfg.num_workers))
    if failures:
        listed = "; ".join(f"{path} ({reason})" for path, reason in failures[:20])
        more = f" and {len(failures) - 20} more" if len(failures) > 20 else ""
        log.warning("Skipping %d unreadable image(s): %s%s", len(failures), listed, more)
        failed = {path for path, _ in failures}
        keep = [i for i, p in enumerate(images.paths) if p not in failed]
        images = ImageFolder(images.root, images.class_names, [images.paths[i] for i in keep],
                             [images.labels[i] for i in keep])
    return cache, list(images.labels), images


def plan_folds(cfg: TrainConfig, images: ImageFolder) -> list[Fold]:
    if cfg.use_cv:
        check_class_sizes(images.labels, images.class_names, cfg.n_splits)
        folds = make_folds(images.labels, cfg.n_splits, cfg.random_state)
    else:
        log.info("Cross-validation is off (--use-cv not given): one stratified split with %.0f%% for "
                 "validation", 100 * cfg.val_fraction)
        folds = make_holdout_split(images.labels, images.class_names, cfg.val_fraction, cfg.random_state)
    smallest = min(len(f.train_idx) for f in folds)
    if cfg.batch_size > smallest:
        raise DataError(f"--batch-size {cfg.batch_size} is larger than the smallest training fold "
                        f"({smallest} images); lower --batch-size")
    return folds


def prepare_run(cfg: TrainConfig) -> Run:
    """Every check that can fail, before a single file is written."""
    resolve_image_encoder(cfg.image_encoder, cfg.image_weights)
    resolve_text_encoder(cfg.text_encoder, cfg.text_weights)
    images = scan_image_folder(cfg.data_dir)
    class_texts = load_class_texts(images.class_names, cfg.class_texts_file, cfg.text_template)
    if cfg.use_cv:
        check_class_sizes(images.labels, images.class_names, cfg.n_splits)
    output_dir = cfg.resolved_output_dir()
    check_output_dir(output_dir, cfg.overwrite)
    log.info("Data: %d images in %d classes (%s)", len(images.paths), len(images.class_names),
             ", ".join(f"{name}: {n}" for name, n in zip(images.class_names, images.class_counts())))
    device, amp_dtype = select_device(cfg)
    seed_everything(cfg.seed)
    model = build_clip_model(cfg.image_encoder, cfg.text_encoder, cfg.embed_dim, cfg.temperature,
                             class_texts, freeze_image=cfg.freeze_image, freeze_text=cfg.freeze_text,
                             img_size=cfg.img_size, image_weights=cfg.image_weights,
                             text_weights=cfg.text_weights)
    initial_state = copy.deepcopy(model.state_dict())
    model.to(device)
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    cache, labels, images = decode_images(cfg, images)
    folds = plan_folds(cfg, images)
    return Run(cfg, output_dir, device, amp_dtype, images, cache, labels, class_texts, folds, model,
               initial_state)


def relative_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def write_run_files(run: Run) -> None:
    if run.output_dir.is_dir():
        clear_output_dir(run.output_dir)  # only reached with --overwrite (checked in prepare_run)
    write_json(run.output_dir / "config.json", run.cfg.to_dict())
    write_json(run.output_dir / "folds.json", {
        "mode": "cv" if run.cfg.use_cv else "holdout",
        "random_state": run.cfg.random_state,
        "class_names": run.images.class_names,
        "folds": [{"fold": f.number,
                   "train": [relative_path(run.images.paths[i], run.images.root) for i in f.train_idx],
                   "val": [relative_path(run.images.paths[i], run.images.root) for i in f.val_idx]}
                  for f in run.folds],
    })


def summarise(run: Run, results: Sequence[FoldResult], wall_time: float) -> dict[str, Any]:
    names = run.images.class_names
    oof_idx = np.concatenate([r.val_idx for r in results])
    oof_probs = np.concatenate([r.val_probs for r in results])
    oof_labels = np.asarray(run.labels)[oof_idx]
    fold_of = np.concatenate([[r.number] * len(r.val_idx) for r in results])
    order = np.argsort(oof_idx)
    write_csv(run.output_dir / "oof_predictions.csv",
              ["path", "fold", "true_class", "predicted_class"] + [f"prob_{n}" for n in names],
              [[relative_path(run.images.paths[i], run.images.root), int(fold_of[j]), names[run.labels[i]],
                names[int(oof_probs[j].argmax())]] + [f"{p:.6f}" for p in oof_probs[j]]
               for j, i in ((j, int(oof_idx[j])) for j in order)])
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
        "oof": classification_metrics(oof_labels, oof_probs),
        "wall_time_s": round(wall_time, 1),
    }
    write_json(run.output_dir / "cv_summary.json", summary)
    return summary


def format_summary_table(summary: dict[str, Any]) -> str:
    folds = summary["folds"]
    keys = [k for k in summary["mean"] if k != "ece"] + ["ece"]
    header = f"{'metric':<20}{'mean ± std':>20}" + "".join(f"{'fold ' + str(f['fold']):>10}" for f in folds)
    header += f"{'pooled':>10}"
    lines = [header, "-" * len(header)]
    for key in keys:
        row = f"{key:<20}{summary['mean'][key]:>11.4f} ± {summary['std'][key]:<6.4f}"
        row += "".join(f"{f['metrics'][key]:>10.4f}" for f in folds)
        row += f"{summary['oof'].get(key, math.nan):>10.4f}"
        lines.append(row)
    lines.append(f"best epochs: {', '.join(str(f['best_epoch']) for f in folds)}  "
                 f"(chosen on {summary['monitor']}); wall time {summary['wall_time_s']:.0f}s")
    return "\n".join(lines)


def run_training(run: Run) -> dict[str, Any]:
    started = time.perf_counter()
    write_run_files(run)
    results = [run_fold(run, fold) for fold in run.folds]
    summary = summarise(run, results, time.perf_counter() - started)
    log.info("Cross-validation summary (%s):\n%s", run.output_dir / "cv_summary.json",
             format_summary_table(summary))
    return summary


def default_log_file(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    return Path("logs") / "clip_training" / f"{run_name(cfg.image_encoder, cfg.text_encoder)}_gpu{cfg.gpu_id}_{stamp}.log"


def main(argv: Sequence[str] | None = None) -> int:
    if "--list-encoders" in (sys.argv[1:] if argv is None else argv):  # needs no --data-dir
        print(format_encoder_table())
        return 0
    try:
        cfg = config_from_args(argv)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_file or default_log_file(cfg))
    try:
        run_training(prepare_run(cfg))
    except USER_ERRORS as exc:
        log.error("%s", exc)
        return 2
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
