#!/usr/bin/env python3
"""train_clip: fine-tune a CLIP-style image-text model on a folder-per-class dataset with K-fold CV.

The story of a run (docs/design.md §1): configuration → checks that write nothing (encoders, data,
class texts, where the output goes) → the run folder locked → images decoded once, folds planned on
the readable ones, model built → for each fold (training/fold.py): zero-shot epoch 0, train, evaluate
each epoch, keep the best and latest checkpoints → ``cv_summary.json`` (→ held-out test
ensemble) → report. ``main`` stays thin; the engine lives in ``training/``.
"""
from __future__ import annotations

import copy
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

import torch

from data.folder import ImageFolder
from models.clip_model import build_clip_model
from models.registry_table import format_encoder_table
from training.arguments import config_from_args
from training.config import TrainConfig
from training.distributed import Distributed
from training.engine import configure_determinism, out_of_memory_error
from training.fold import run_fold
from training.inputs import checked_and_locked
from training.lora import adapt_towers, lora_record
from training.results import write_reports, write_summary
from training.run import (Run, check_resumable, decode_images, plan_data, warn_leakage,
                          warn_model_choices, write_run_files)
from utils.device import compile_mode, describe_device, mixed_precision_dtype
from utils.errors import UserError
from utils.logging_setup import setup_logging
from utils.run_dir import RunDir
from utils.run_names import default_log_file
from utils.seeding import seed_everything

log = logging.getLogger("train_clip")


def prepare_run(cfg: TrainConfig, run_dir: RunDir, images: ImageFolder, class_texts: list[list[str]],
                processes: Distributed, device: torch.device) -> Run:
    """Images decoded once, the splits of the readable ones, the model built; the run folder is locked."""
    plan = plan_data(cfg, images)  # before the long decoding, so that a class too small to split fails at once
    decoded, readable = decode_images(cfg, images)
    if readable is not images:  # unreadable images were dropped: the splits are of what is left
        images, plan = readable, plan_data(cfg, readable)
    if not cfg.use_cv:
        log.info("Cross-validation is off (--use-cv not given): one stratified split with %.0f%% for "
                 "validation", 100 * cfg.val_fraction)
    log.info("Data: %d images in %d classes (%s)", len(images.paths), len(images.class_names),
             ", ".join(f"{name}: {n}" for name, n in zip(images.class_names, images.class_counts())))
    if images.groups is not None:
        log.info("Grouped by patient: %d groups; no group is on both sides of any split", len(set(images.groups)))
    warn_leakage(cfg, images, decoded, plan.folds)
    amp_dtype = mixed_precision_dtype(device, cfg.amp)
    describe_device(device, amp_dtype)
    configure_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    model = build_clip_model(cfg.image_encoder, cfg.text_encoder, cfg.embed_dim, cfg.temperature,
                             class_texts, freeze_image=cfg.freeze_image, freeze_text=cfg.freeze_text,
                             img_size=cfg.img_size, image_weights=cfg.image_weights,
                             text_weights=cfg.text_weights)
    encoders = {"image_encoder": cfg.image_encoder, "text_encoder": cfg.text_encoder}
    adapt_towers(model, cfg.lora_rank, encoders)  # --lora-rank: peft's adapters, the towers' base frozen
    if processes.is_main:  # the same start-up warnings from every torchrun process would only repeat
        warn_model_choices(cfg, model, images.class_names)
    initial_state = copy.deepcopy(model.state_dict())
    model.to(device)
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile_towers(compile_mode(cfg.compile_mode, device))
    run = Run(cfg, run_dir, device, amp_dtype, images, decoded.cache, class_texts, plan.folds, plan.test_idx, model,
              initial_state, model.text_encoder.saved_files(), image_files=model.image_encoder.saved_files(),
              processes=processes, network=processes.wrap(model, device),
              adapters=lora_record(model, cfg.lora_rank, encoders, initial_state))
    if processes.enabled:
        log.info("One training over %d processes (torchrun): --batch-size %d is the global batch, %d images "
                 "per process and step", processes.world_size, cfg.batch_size, cfg.batch_size // processes.world_size)
    if cfg.resume and run_dir.folds.is_file():
        check_resumable(run)
    return run


def run_training(run: Run) -> None:
    """Every fold, then (rank 0 alone under torchrun) the summary, the test ensemble and the report."""
    if run.processes.is_main:
        write_run_files(run)
    try:
        results = [run_fold(run, fold) for fold in run.folds]
    except torch.OutOfMemoryError:  # in training or evaluation, any fold
        raise out_of_memory_error(run.model, run.cfg, run.device, run.amp_dtype,
                                  run.processes.world_size) from None
    if run.processes.is_main:
        write_summary(run, results)
        write_reports(run)


def log_file_of(cfg: TrainConfig) -> Path:
    return default_log_file(cfg.image_encoder, cfg.text_encoder, cfg.gpu_id, datetime.now())


def train(cfg: TrainConfig, processes: Distributed | None = None) -> None:
    """Check, lock the run folder, train every fold, summarise; the lock is held until the end."""
    processes = processes or Distributed.from_environment()
    processes.check_config(cfg)
    device = processes.device(cfg.gpu_id)
    processes.start(device)
    try:
        run_dir = RunDir(cfg.resolved_output_dir())
        if cfg.resume and processes.broadcast(run_dir.is_finished()):
            log.info("--resume: the run in %s is finished (every fold and cv_summary.json are there); nothing "
                     "to do, nothing changed", run_dir.path)
            return
        with checked_and_locked(cfg, run_dir, processes) as (images, class_texts):
            run_training(prepare_run(cfg, run_dir, images, class_texts, processes, device))
    finally:
        processes.stop()


def main(argv: Sequence[str] | None = None) -> int:
    if "--list-encoders" in (sys.argv[1:] if argv is None else argv):  # needs no --data-dir
        print(format_encoder_table())
        return 0
    try:
        cfg = config_from_args(argv)
        processes = Distributed.from_environment()
        if processes.is_main:
            setup_logging(cfg.log_file or log_file_of(cfg))
        else:  # under torchrun the other processes write no file, and say only what went wrong
            setup_logging(None, logging.WARNING, prefix=f"[rank {processes.rank}] ")
    except UserError as exc:  # logging is not set up yet: the console only
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        train(cfg, processes)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("Interrupted; continue with: python train_clip.py --resume --output-dir %s",
                  cfg.resolved_output_dir())
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
