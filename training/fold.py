"""One fold: loaders, the zero-shot epoch 0, the epoch loop, best/latest checkpoints, resumption.

What chooses the fold's model is ``--select-on``: with ``inner`` (the default) the inner validation
split of the training fold picks the epoch, stops early and fits the temperature, and the fold's
validation images are only scored; ``last`` keeps the last epoch; ``fold`` chooses on the scored
images themselves, which makes every number optimistic (kept for comparison).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from data.batch_transforms import BatchAugmentation, ToChannels
from data.folds import Fold
from data.images import CachedImageDataset, ImageCache
from data.sampling import SeededSampler, weighted_sampler
from data.transforms import ToModelInput, build_augmentation
from reporting.calibration import apply_temperature, fit_temperature
from reporting.metrics import classification_metrics, expected_calibration_error, scalar_metrics
from training.checkpoints import FoldCheckpoints, restore_rng
from training.config import TrainConfig
from training.distributed import ShardedBatchSampler, merge_evaluations, shard
from training.engine import build_optimizer, evaluate, train_one_epoch, warmup_cosine
from training.finetune import LinearProbe, ScoredModel
from training.layers import lock_groups
from training.run import Run
from utils.io import read_json, write_json
from utils.progress import TimeLeft, describe_time_left, epoch_progress, slot_of_this_process, time_left, write_record
from utils.seeding import seed_everything, seed_worker

log = logging.getLogger("train_clip")

SELECTION_SETS = {"inner": "the inner validation split", "last": "none: the last epoch",
                  "fold": "the validation images it is scored on"}
UNTRAINED_BEST_WARNING = ("Fold %d: the best epoch is 0, the untrained model: training never improved on it "
                          "(try another --learning-rate or more --epochs); its checkpoint_best.pth is that model")


@dataclass
class FoldState:
    """What evolves during a fold; saved in ``checkpoint_latest.pth`` so a fold can resume."""

    epoch: int = -1  # last finished epoch; 0 is the zero-shot evaluation before training
    best_value: float = math.nan  # --monitor on the images that choose (see --select-on)
    best_epoch: int = -1  # the chosen epoch
    best_metrics: dict[str, Any] = field(default_factory=dict)  # the fold's validation images, chosen epoch
    best_probs: list[list[float]] = field(default_factory=list)  # validation probabilities, fold order
    best_inner_probs: list[list[float]] = field(default_factory=list)  # inner validation, fold.inner_val_idx order
    epochs_since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FoldResult:
    """The chosen model's numbers; ``val_probs`` and ``inner_probs`` are calibrated with ``temperature``
    (1: not calibrated), ``uncalibrated_val_probs`` are the model's own."""

    number: int
    best_epoch: int
    metrics: dict[str, Any]
    val_idx: list[int]
    val_probs: np.ndarray
    inner_idx: list[int] = field(default_factory=list)
    inner_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    temperature: float = 1.0
    uncalibrated_val_probs: np.ndarray | None = None

    def document(self) -> dict[str, Any]:
        """``result.json``."""
        document = {"fold": self.number, "best_epoch": self.best_epoch, "metrics": self.metrics,
                    "val_probs": self.val_probs.tolist(), "inner_val_probs": self.inner_probs.tolist(),
                    "temperature": self.temperature}
        if self.uncalibrated_val_probs is not None:
            document["uncalibrated_val_probs"] = self.uncalibrated_val_probs.tolist()
        return document


def make_loaders(run: Run, fold: Fold,
                 generator: torch.Generator) -> tuple[DataLoader, DataLoader, DataLoader | None, SeededSampler]:
    """Training loader (shuffled or class-weighted, seeded augmentation) over the images the model
    fits, the validation loader and the inner validation loader (None without an inner split)."""
    cfg = run.cfg
    fit_idx = fold.fit_idx
    train_set = training_set(cfg, run.cache, fit_idx, run.labels)
    if cfg.use_weighted_sampling:
        base = weighted_sampler([run.labels[i] for i in fit_idx], len(run.images.class_names),
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
    else:
        # --batch-size is the global batch: each process trains on its share of every step's batch.
        shares = ShardedBatchSampler(sampler, cfg.batch_size, drop_last, processes.rank, processes.world_size)
        train_loader = DataLoader(train_set, batch_sampler=shares, generator=loader_generator, **common)
    inner_loader = scoring_loader(run, fold.inner_val_idx, common) if fold.inner_val_idx else None
    return train_loader, scoring_loader(run, fold.val_idx, common), inner_loader, sampler


def training_set(cfg: TrainConfig, cache: ImageCache, indices: Sequence[int],
                 labels: Sequence[int]) -> CachedImageDataset:
    """The images a fold trains on: augmented in the loader's workers, or (--augment-on device) as
    cached, uint8, for :func:`batch_augmentation` on the device."""
    if cfg.augment_on == "device":
        return CachedImageDataset(cache, indices, labels, None, ToChannels(cache.channels()))
    return CachedImageDataset(cache, indices, labels, build_augmentation(cfg.augmentation, cfg.img_size),
                              ToModelInput())


def batch_augmentation(cfg: TrainConfig, seed: int, process: int = 0) -> BatchAugmentation | None:
    """With --augment-on device: the augmentation of whole batches, seeded as the fold's sampler."""
    return BatchAugmentation(cfg.augmentation, seed, process) if cfg.augment_on == "device" else None


def scoring_loader(run: Run, indices: list[int], common: dict[str, Any]) -> DataLoader:
    """Un-augmented images in order; under torchrun each process scores a disjoint share (gathered in
    evaluate_fold)."""
    dataset = CachedImageDataset(run.cache, indices, run.labels, None, ToModelInput())
    processes = run.processes
    if not processes.enabled:
        return DataLoader(dataset, batch_size=run.cfg.batch_size * 2, shuffle=False, **common)
    share = shard(range(len(dataset)), processes.rank, processes.world_size)
    return DataLoader(dataset, batch_size=max(1, run.cfg.batch_size * 2 // processes.world_size), sampler=share,
                      **common)


def evaluate_fold(run: Run, val_loader: DataLoader,
                  model: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The validation fold's probabilities, labels, indices and loss of ``model`` (default: the run's);
    under torchrun every process gets all of them (each image counted once), so that all take the same
    best-epoch and early-stop decisions."""
    evaluation = evaluate(model or run.model, val_loader, run.device, run.amp_dtype)
    if not run.processes.enabled:
        return evaluation
    return merge_evaluations(run.processes.all_gather(evaluation))


def is_better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


@dataclass
class Loaders:
    """What one epoch scores: the fold's validation images and, with an inner split, the images that choose."""

    val: DataLoader
    inner: DataLoader | None = None


def record_epoch(run: Run, fold: Fold, state: FoldState, epoch: int, stats: dict[str, float],
                 loaders: Loaders, started: float, checkpoints: FoldCheckpoints, training: dict[str, Any],
                 scored: ScoredModel, writer: Any = None) -> None:
    """Validate, update history and the chosen epoch, write history and checkpoints, log one line."""
    cfg = run.cfg
    model = scored.model()  # what is evaluated and saved: the trained weights, their EMA, WiSE-FT's
    probs, labels, indices, val_loss = evaluate_fold(run, loaders.val, model)
    metrics = classification_metrics(labels, probs)
    row = {"epoch": epoch, **stats, "seconds": round(time.perf_counter() - started, 3), "val_loss": val_loss,
           **scalar_metrics(metrics),
           # Text-tower runs since the fold (or its resumption) began: stays 1 with --freeze-text.
           "text_encoder_calls": run.model.text_encoder_calls}
    chooser = metrics  # --select-on fold: the scored images themselves
    if loaders.inner is not None:
        inner_probs, inner_labels, inner_indices, inner_loss = evaluate_fold(run, loaders.inner, model)
        chooser = classification_metrics(inner_labels, inner_probs)
        row.update({"inner_val_loss": inner_loss, **{f"inner_{k}": v for k, v in scalar_metrics(chooser).items()}})
    state.history.append(row)
    state.epoch = epoch
    # The first evaluation is the best so far even when the metric is undefined (NaN) there; with
    # --select-on last every epoch replaces the one before.
    improved = (cfg.select_on == "last" or state.best_epoch < 0
                or is_better(chooser[cfg.monitor], state.best_value))
    if improved:
        state.best_value, state.best_epoch, state.best_metrics = chooser[cfg.monitor], epoch, metrics
        state.best_probs = probs[np.argsort(indices)].tolist()  # fold.val_idx is sorted too
        if loaders.inner is not None:
            state.best_inner_probs = inner_probs[np.argsort(inner_indices)].tolist()
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
    # --select-on last: only the last epoch's model is kept, so it alone is written as the best.
    if improved and cfg.save_best and (cfg.select_on != "last" or epoch == cfg.epochs):
        checkpoints.save_best(model, epoch, scalar_metrics(metrics))
    checkpoints.save_latest(model, epoch, scalar_metrics(metrics), training, vars(state), generator)
    run.record_time()
    left = note_progress(run, fold, epoch, started)
    inner = "" if loaders.inner is None else f"  inner {cfg.monitor} {chooser[cfg.monitor]:.4f}"
    log.info("fold %d epoch %3d/%d  loss %s  lr %s  acc %.4f  bal_acc %.4f  macro_f1 %.4f%s  %.1fs%s  %s",
             fold.number, epoch, cfg.epochs, f"{stats['train_loss']:.4f}" if stats else "   -  ",
             f"{stats['lr']:.2e}" if stats else "   -   ", metrics["accuracy"], metrics["balanced_accuracy"],
             metrics["macro_f1"], inner, row["seconds"], "  *best*" if improved else "", describe_time_left(left))


def note_progress(run: Run, fold: Fold, epoch: int, started: float) -> TimeLeft:
    """Time the epoch (all of it: training, validation, checkpoints), estimate the time left from the
    epochs timed so far and write the run's progress.json (rank 0 only calls this)."""
    if epoch > 0:  # epoch 0 only evaluates
        run.epoch_seconds.append(time.perf_counter() - started)
    place = run.folds.index(fold) + 1
    left = time_left(run.epoch_seconds, epoch, run.cfg.epochs, len(run.folds) - place)
    write_record(run.run_dir.progress, epoch_progress(slot_of_this_process(str(run.device)), fold.number,
                                                      len(run.folds), place, epoch, run.cfg.epochs, left,
                                                      run.cfg.log_file))
    return left


def tensorboard_writer(run: Run, fold: Fold) -> Any:
    """A TensorBoard writer for the fold with --tensorboard (the package was checked in prepare_run)."""
    if not (run.cfg.tensorboard and run.processes.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.run_dir.tensorboard / run.run_dir.fold_dir(fold.number).name))


def load_fold_result(run: Run, fold: Fold) -> FoldResult:
    saved = read_json(run.run_dir.fold_result(fold.number), "fold result")
    uncalibrated = saved.get("uncalibrated_val_probs")
    return FoldResult(fold.number, saved["best_epoch"], saved["metrics"], list(fold.val_idx),
                      np.asarray(saved["val_probs"], dtype=np.float64), list(fold.inner_val_idx),
                      np.asarray(saved.get("inner_val_probs", []), dtype=np.float64).reshape(
                          len(fold.inner_val_idx), len(run.images.class_names)),
                      saved.get("temperature", 1.0),
                      None if uncalibrated is None else np.asarray(uncalibrated, dtype=np.float64))


def finish_fold(run: Run, fold: Fold, state: FoldState, checkpoints: FoldCheckpoints) -> FoldResult:
    """The chosen epoch's numbers, calibrated with --calibrate temperature on the images that chose it."""
    cfg = run.cfg
    val_probs = np.asarray(state.best_probs, dtype=np.float64)
    inner_probs = np.asarray(state.best_inner_probs, dtype=np.float64).reshape(len(fold.inner_val_idx),
                                                                               len(run.images.class_names))
    result = FoldResult(fold.number, state.best_epoch, state.best_metrics, list(fold.val_idx), val_probs,
                        list(fold.inner_val_idx), inner_probs)
    if cfg.calibrate == "none":
        return result
    on_inner = bool(fold.inner_val_idx)
    chose_idx, chose_probs = (fold.inner_val_idx, inner_probs) if on_inner else (fold.val_idx, val_probs)
    temperature = fit_temperature(np.asarray(run.labels)[chose_idx], chose_probs)
    calibrated = apply_temperature(val_probs, temperature)
    labels = np.asarray(run.labels)[fold.val_idx]
    metrics = classification_metrics(labels, calibrated)
    log.info("Fold %d: temperature %.4f (fitted on the %s); ECE of the validation images %.4f -> %.4f",
             fold.number, temperature, "inner validation split" if on_inner else "validation images themselves",
             expected_calibration_error(labels, val_probs), metrics["ece"])
    if run.processes.is_main and cfg.save_best:
        checkpoints.set_temperature(temperature)
    return FoldResult(fold.number, state.best_epoch, metrics, list(fold.val_idx), calibrated,
                      list(fold.inner_val_idx), apply_temperature(inner_probs, temperature), temperature, val_probs)


def run_fold(run: Run, fold: Fold) -> FoldResult:
    cfg, model, device, processes = run.cfg, run.model, run.device, run.processes
    checkpoints = FoldCheckpoints(run.run_dir, fold.number, run.checkpoint_metadata(), run.shared_weights,
                                  cfg.checkpoint_dtype)
    # Under torchrun rank 0 looks at the folder and tells the others: rank 0 may be writing meanwhile.
    if processes.broadcast(cfg.resume and run.run_dir.fold_finished(fold.number)):
        log.info("Fold %d finished earlier: keeping its results", fold.number)
        if processes.is_main:
            checkpoints.check_finished()  # refused now, not after the folds left have trained
            checkpoints.drop_training_state()  # in case the earlier run stopped between the two writes
        return load_fold_result(run, fold)
    if processes.is_main:
        run.run_dir.fold_dir(fold.number).mkdir(parents=True, exist_ok=True)
        checkpoints.check_disk_space(model, len(run.folds) - run.folds.index(fold), cfg.save_best)
    seed_everything(cfg.seed + fold.number)
    model.load_state_dict(run.initial_state)
    model.reset_text_cache()
    generator = torch.Generator().manual_seed(cfg.seed + fold.number)
    train_loader, val_loader, inner_loader, sampler = make_loaders(run, fold, generator)
    augment = batch_augmentation(cfg, cfg.seed + fold.number, processes.rank)
    loaders = Loaders(val_loader, inner_loader)
    lock_groups(model, cfg.unlocked_groups, cfg.image_encoder)
    optimizer = build_optimizer(model, cfg)
    scored = ScoredModel(model, cfg, run.initial_state)
    probe = LinearProbe(model, cfg.lp_epochs)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    state = FoldState()
    writer = tensorboard_writer(run, fold)

    def training_state() -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "sampler_generator": generator, **scored.training_weights()}

    saved = checkpoints.resume_state() if cfg.resume else None
    if processes.broadcast(saved is not None):  # every process reads the same file; rank 0 decides
        model.load_state_dict(saved["model"])
        scored.restore(saved)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        state = FoldState(**saved["fold_state"])
        restore_rng(saved["rng"], generator)
        run.epoch_seconds.extend(row["seconds"] for row in state.history if row["epoch"] > 0)
        log.info("Fold %d: resuming after epoch %d", fold.number, state.epoch)
    else:
        inner = (f" (of them {len(fold.inner_val_idx)} held out as the inner validation split that chooses the "
                 "epoch)" if fold.inner_val_idx else "")
        log.info("Fold %d/%d: %d training%s, %d validation images, %d steps per epoch; epoch 0 is the "
                 "zero-shot baseline (no training)", fold.number, len(run.folds), len(fold.train_idx), inner,
                 len(fold.val_idx), steps_per_epoch)
        record_epoch(run, fold, state, 0, {}, loaders, time.perf_counter(), checkpoints, training_state(),
                     scored, writer)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if cfg.patience and state.epochs_since_best >= cfg.patience:
            log.info("Fold %d: early stop, no improvement of %s%s for %d epochs", fold.number,
                     "inner " if inner_loader is not None else "", cfg.monitor, cfg.patience)
            break
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        if augment is not None:
            augment.set_epoch(epoch)
        probe.enter(epoch)
        stats = train_one_epoch(run.network, train_loader, optimizer, scheduler, scaler, device, run.amp_dtype,
                                cfg.loss == "symmetric", epoch,
                                description=f"fold {fold.number} epoch {epoch}/{cfg.epochs}", processes=processes,
                                accum_steps=cfg.accum_steps, after_step=scored.after_step, augment=augment)
        processes.broadcast_buffers(model)  # the model every process evaluates is the one rank 0 saves
        if scored.ema is not None:
            processes.broadcast_buffers(scored.ema.module)
        record_epoch(run, fold, state, epoch, stats, loaders, started, checkpoints, training_state(), scored,
                     writer)
    probe.leave()
    if writer is not None:
        writer.close()
    result = finish_fold(run, fold, state, checkpoints)
    if processes.is_main:
        write_json(run.run_dir.fold_result(fold.number), result.document())
        # Only after result.json: until it exists, --resume needs the training state.
        checkpoints.drop_training_state()
    log.info("Fold %d done: best epoch %d (chosen on %s), %s %.4f there", fold.number, state.best_epoch,
             SELECTION_SETS[cfg.select_on], cfg.monitor, state.best_value)
    if state.best_epoch == 0 and processes.is_main:
        log.warning(UNTRAINED_BEST_WARNING, fold.number)
    return result

