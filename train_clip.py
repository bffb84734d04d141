#!/usr/bin/env python3
"""train_clip: fine-tune a CLIP-style image-text model on a folder-per-class dataset with K-fold CV.

The story of a run (docs/design.md §1): configuration → checks that write nothing (encoders, data,
class texts, where the output goes) → the run folder locked → folds planned, model built,
images decoded once → for each fold (training/fold.py): zero-shot epoch 0, train, evaluate
each epoch, keep the best and latest checkpoints → ``cv_summary.json`` (→ held-out test
ensemble) → report. ``main`` stays thin; the engine lives in ``training/``.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from data.dicom import check_window
from data.folder import ImageFolder, scan_image_folder, undecodable_names
from data.groups import assign_groups
from data.manifest import scan_manifest
from data.texts import load_class_texts
from models.clip_model import build_clip_model
from models.image_encoders import resolve_image_encoder
from models.registry_table import format_encoder_table
from models.text_encoders import resolve_text_encoder
from reporting.report import report_from_run_dir
from reporting.summary import format_summary_table
from training.checkpoints import store_frozen_towers
from training.config import ConfigError, TrainConfig, config_from_args
from training.distributed import Distributed
from training.engine import configure_determinism, out_of_memory_error
from training.fold import run_fold
from training.gallery import write_gallery
from training.results import TEST_SUMMARY_KEYS, evaluate_test_ensemble, summarise
from training.run import (Run, check_output_contents, check_output_location, check_resumable, decode_images,
                          folds_document, own_log_file, plan_folds, split_off_test, warn_leakage,
                          warn_model_choices)
from utils.device import mixed_precision_dtype, select_device
from utils.errors import UserError
from utils.io import write_json
from utils.logging_setup import setup_logging
from utils.run_dir import RunDir, default_log_file
from utils.seeding import seed_everything

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


def prepare_run(cfg: TrainConfig, run_dir: RunDir, images: ImageFolder, class_texts: list[list[str]],
                processes: Distributed = Distributed(), device: torch.device | None = None) -> Run:
    """Folds, device and model, and the images decoded once; the run folder is locked by now."""
    # Planned before the model is built, so that a class too small to split fails at once.
    dev_idx, test_idx = split_off_test(cfg, images)
    folds = plan_folds(cfg, images, dev_idx)
    if not cfg.use_cv:
        log.info("Cross-validation is off (--use-cv not given): one stratified split with %.0f%% for "
                 "validation", 100 * cfg.val_fraction)
    log.info("Data: %d images in %d classes (%s)", len(images.paths), len(images.class_names),
             ", ".join(f"{name}: {n}" for name, n in zip(images.class_names, images.class_counts())))
    if images.groups is not None:
        log.info("Grouped by patient: %d groups; no group is on both sides of any split", len(set(images.groups)))
    device = device or select_device(cfg.gpu_id)
    amp_dtype = mixed_precision_dtype(device, cfg.amp)
    describe_device(device, amp_dtype)
    configure_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    model = build_clip_model(cfg.image_encoder, cfg.text_encoder, cfg.embed_dim, cfg.temperature,
                             class_texts, freeze_image=cfg.freeze_image, freeze_text=cfg.freeze_text,
                             img_size=cfg.img_size, image_weights=cfg.image_weights,
                             text_weights=cfg.text_weights)
    if processes.is_main:  # the same start-up warnings from every torchrun process would only repeat
        warn_model_choices(cfg, model, images.class_names)
    initial_state = copy.deepcopy(model.state_dict())
    model.to(device)
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile_towers()
    decoded, readable = decode_images(cfg, images)
    if readable is not images:  # unreadable images were dropped: split what is left
        images = readable
        dev_idx, test_idx = split_off_test(cfg, images)
        folds = plan_folds(cfg, images, dev_idx)
    warn_leakage(cfg, images, decoded, folds)
    run = Run(cfg, run_dir, device, amp_dtype, images, decoded.cache, class_texts, folds, test_idx, model,
              initial_state, model.text_encoder.saved_files(), image_files=model.image_encoder.saved_files(),
              processes=processes, network=processes.wrap(model, device))
    if processes.enabled:
        log.info("One training over %d processes (torchrun): --batch-size %d is the global batch, %d images "
                 "per process and step", processes.world_size, cfg.batch_size, cfg.batch_size // processes.world_size)
    if cfg.resume and run_dir.folds.is_file():
        check_resumable(run)
    return run


def describe_device(device: torch.device, amp_dtype: torch.dtype | None) -> None:
    if device.type == "cpu":
        log.info("CUDA is not available: training on the CPU (mixed precision off)")
        return
    torch.cuda.set_device(device)
    log.info("Training on %s (%s), mixed precision: %s", device, torch.cuda.get_device_name(device),
             amp_dtype or "off")


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


def run_training(run: Run) -> dict[str, Any] | None:
    """Every fold, then (rank 0 alone under torchrun) the summary, the test ensemble and the report."""
    if run.processes.is_main:
        write_run_files(run)
    try:
        results = [run_fold(run, fold) for fold in run.folds]
    except torch.OutOfMemoryError:  # in training or evaluation, any fold
        raise out_of_memory_error(run.model, run.cfg, run.device, run.amp_dtype,
                                  run.processes.world_size) from None
    if not run.processes.is_main:
        return None
    summary = summarise(run, results)
    if run.test_idx:
        test = evaluate_test_ensemble(run, results, summary)
        summary["test"] = test["metrics"]
        summary.update({f"test_{key}": test[key] for key in TEST_SUMMARY_KEYS if key in test})
    run.record_time()
    summary["wall_time_s"] = round(run.run_dir.wall_time_s(), 1)
    write_json(run.run_dir.summary, summary)
    log.info("Cross-validation summary (%s):\n%s", run.run_dir.summary, format_summary_table(summary))
    write_report_files(run)
    return summary


def write_report_files(run: Run) -> None:
    """Gallery, plots and report.md; a failure here is reported but does not undo the finished results."""
    output_dir = run.run_dir.path
    try:
        write_gallery(run.run_dir, run.device, run.cfg.explain_method)
    except Exception as exc:  # noqa: BLE001 - the pictures are an extra: no failure of theirs may fail a run
        log.warning("Could not draw the saliency gallery of report.md (results are complete; retry with "
                    "'python -m training.gallery %s'): %s: %s", output_dir, type(exc).__name__, exc)
    try:
        log.info("Report: %s", report_from_run_dir(output_dir))
    except (ValueError, OSError, RuntimeError) as exc:
        log.warning("Could not write the plots and report.md (results are complete; retry with "
                    "'python -m reporting.report %s'): %s", output_dir, exc)


def log_file_of(cfg: TrainConfig) -> Path:
    return default_log_file(cfg.image_encoder, cfg.text_encoder, cfg.gpu_id, datetime.now())


def training_device(cfg: TrainConfig, processes: Distributed) -> torch.device:
    """--gpu-id alone; under torchrun each process takes the GPU of its LOCAL_RANK (--gpu-id is ignored)."""
    if not processes.enabled:
        return select_device(cfg.gpu_id)
    if cfg.gpu_id != 0 and processes.is_main:
        log.warning("--gpu-id %d is ignored under torchrun: process k of a machine uses GPU k; choose the GPUs "
                    "with CUDA_VISIBLE_DEVICES", cfg.gpu_id)
    if torch.cuda.is_available() and processes.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started more processes on this machine than its {torch.cuda.device_count()} "
                          f"GPU(s) (LOCAL_RANK {processes.local_rank}): lower --nproc-per-node")
    device = select_device(processes.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def checked_and_locked(cfg: TrainConfig, run_dir: RunDir,
                       processes: Distributed) -> Iterator[tuple[ImageFolder, list[list[str]]]]:
    """The checked inputs, with the run folder locked by rank 0 until the end.

    Under torchrun only rank 0 checks and locks; the other processes wait for its verdict (the
    inputs, or its error), so that all go on or all stop.
    """
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


def train(cfg: TrainConfig, processes: Distributed | None = None) -> None:
    """Check, lock the run folder, train every fold, summarise; the lock is held until the end."""
    processes = processes or Distributed.from_environment()
    processes.check_config(cfg)
    device = training_device(cfg, processes)
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
