"""One fold: loaders, the zero-shot epoch 0, the epoch loop, best/latest checkpoints, resumption."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from data.folds import Fold
from data.images import CachedImageDataset
from data.sampling import SeededSampler, weighted_sampler
from data.transforms import ToModelInput, build_augmentation
from reporting.metrics import classification_metrics, scalar_metrics
from training.checkpoints import FoldCheckpoints, restore_rng
from training.distributed import ShardedBatchSampler, merge_evaluations, shard
from training.engine import build_optimizer, evaluate, train_one_epoch, warmup_cosine
from training.run import Run
from utils.io import read_json, write_json
from utils.seeding import seed_everything, seed_worker

log = logging.getLogger("train_clip")

UNTRAINED_BEST_WARNING = ("Fold %d: the best epoch is 0, the untrained model: training never improved on it "
                          "(try another --learning-rate or more --epochs); its checkpoint_best.pth is that model")


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
    # drop_last: a last batch of one image would break BatchNorm and add noise. With it, every
    # step's batch is a full --batch-size (plan_folds refuses a training fold smaller than one).
    drop_last = len(train_set) > cfg.batch_size
    loader_generator = torch.Generator().manual_seed(cfg.seed)
    processes = run.processes
    if not processes.enabled:
        train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                                  generator=loader_generator, **common)
        val_loader = DataLoader(val_set, batch_size=cfg.batch_size * 2, shuffle=False, **common)
        return train_loader, val_loader, sampler
    # --batch-size is the global batch: each process trains on its share of every step's batch,
    # and validates a disjoint share of the validation images (gathered in evaluate_fold).
    shares = ShardedBatchSampler(sampler, cfg.batch_size, drop_last, processes.rank, processes.world_size)
    train_loader = DataLoader(train_set, batch_sampler=shares, generator=loader_generator, **common)
    val_share = shard(range(len(val_set)), processes.rank, processes.world_size)
    val_loader = DataLoader(val_set, batch_size=max(1, cfg.batch_size * 2 // processes.world_size),
                            sampler=val_share, **common)
    return train_loader, val_loader, sampler


def evaluate_fold(run: Run, val_loader: DataLoader) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The validation fold's probabilities, labels, indices and loss; under torchrun every process
    gets all of them (each image counted once), so that all take the same best-epoch and early-stop
    decisions."""
    evaluation = evaluate(run.model, val_loader, run.device, run.amp_dtype)
    if not run.processes.enabled:
        return evaluation
    return merge_evaluations(run.processes.all_gather(evaluation))


def is_better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


def record_epoch(run: Run, fold: Fold, state: FoldState, epoch: int, stats: dict[str, float],
                 val_loader: DataLoader, started: float, checkpoints: FoldCheckpoints, training: dict[str, Any],
                 writer: Any = None) -> None:
    """Validate, update history and best-so-far, write history and checkpoints, log one line."""
    cfg = run.cfg
    probs, labels, indices, val_loss = evaluate_fold(run, val_loader)
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
    # The RNG state is captured here, after validation, not when ``training`` was built: iterating the
    # validation loader draws from torch's global RNG, and a resumed fold must continue from after it.
    generator = training.pop("sampler_generator")
    if not run.processes.is_main:
        return  # rank 0 writes; the processes' states agree (the same gathered evaluation)
    write_json(run.run_dir.history(fold.number), state.history)
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, epoch)
        writer.flush()
    if improved and cfg.save_best:
        checkpoints.save_best(run.model, epoch, scalar_metrics(metrics))
    checkpoints.save_latest(run.model, epoch, scalar_metrics(metrics), training, vars(state), generator)
    run.record_time()
    log.info("fold %d epoch %3d/%d  loss %s  lr %s  acc %.4f  bal_acc %.4f  macro_f1 %.4f  %.1fs%s",
             fold.number, epoch, cfg.epochs, f"{stats['train_loss']:.4f}" if stats else "   -  ",
             f"{stats['lr']:.2e}" if stats else "   -   ", metrics["accuracy"], metrics["balanced_accuracy"],
             metrics["macro_f1"], row["seconds"], "  *best*" if improved else "")


def tensorboard_writer(run: Run, fold: Fold) -> Any:
    """A TensorBoard writer for the fold with --tensorboard (the package was checked in prepare_run)."""
    if not (run.cfg.tensorboard and run.processes.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.run_dir.tensorboard / run.run_dir.fold_dir(fold.number).name))


def load_fold_result(run: Run, fold: Fold) -> FoldResult:
    saved = read_json(run.run_dir.fold_result(fold.number), "fold result")
    return FoldResult(fold.number, saved["best_epoch"], saved["metrics"], list(fold.val_idx),
                      np.asarray(saved["val_probs"], dtype=np.float64))


def run_fold(run: Run, fold: Fold) -> FoldResult:
    cfg, model, device, processes = run.cfg, run.model, run.device, run.processes
    checkpoints = FoldCheckpoints(run.run_dir, fold.number, run.checkpoint_metadata(), run.shared_weights,
                                  cfg.checkpoint_dtype)
    # Under torchrun rank 0 looks at the folder and tells the others: rank 0 may be writing meanwhile.
    if processes.broadcast(cfg.resume and run.run_dir.fold_finished(fold.number)):
        log.info("Fold %d finished earlier: keeping its results", fold.number)
        if processes.is_main:
            checkpoints.drop_training_state()  # in case the earlier run stopped between the two writes
        return load_fold_result(run, fold)
    if processes.is_main:
        run.run_dir.fold_dir(fold.number).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + fold.number)
    model.load_state_dict(run.initial_state)
    model.reset_text_cache()
    generator = torch.Generator().manual_seed(cfg.seed + fold.number)
    train_loader, val_loader, sampler = make_loaders(run, fold, generator)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    state = FoldState()
    writer = tensorboard_writer(run, fold)

    def training_state() -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "sampler_generator": generator}

    if processes.broadcast(cfg.resume and checkpoints.has_latest()):
        saved = checkpoints.load_latest()
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
        record_epoch(run, fold, state, 0, {}, val_loader, time.perf_counter(), checkpoints, training_state(),
                     writer)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if cfg.patience and state.epochs_since_best >= cfg.patience:
            log.info("Fold %d: early stop, no improvement of %s for %d epochs", fold.number, cfg.monitor,
                     cfg.patience)
            break
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        stats = train_one_epoch(run.network, train_loader, optimizer, scheduler, scaler, device, run.amp_dtype,
                                cfg.loss == "symmetric", epoch,
                                description=f"fold {fold.number} epoch {epoch}/{cfg.epochs}", processes=processes)
        processes.broadcast_buffers(model)  # the model every process evaluates is the one rank 0 saves
        record_epoch(run, fold, state, epoch, stats, val_loader, started, checkpoints, training_state(), writer)
    if writer is not None:
        writer.close()
    if processes.is_main:
        write_json(run.run_dir.fold_result(fold.number), {"fold": fold.number, "best_epoch": state.best_epoch,
                                                 "metrics": state.best_metrics, "val_probs": state.best_probs})
        # Only after result.json: until it exists, --resume needs the training state.
        checkpoints.drop_training_state()
    log.info("Fold %d done: best epoch %d, %s %.4f", fold.number, state.best_epoch, cfg.monitor, state.best_value)
    if state.best_epoch == 0 and processes.is_main:
        log.warning(UNTRAINED_BEST_WARNING, fold.number)
    return FoldResult(fold.number, state.best_epoch, state.best_metrics, list(fold.val_idx),
                      np.asarray(state.best_probs, dtype=np.float64))

