"""Draw report.md's gallery: heatmaps of a finished run's most telling out-of-fold images.

Each image is explained by the fold model that validated it (its best checkpoint), for the class
that model predicted, so a wrong prediction shows what misled it. The images are read from the
run's ``--data-dir`` and preprocessed as validation images were. Works from the run folder alone:

    python -m training.gallery OUTPUT_DIR [--explain-method gradcam|gradcam++|eigencam]

draws the gallery of an existing run and rewrites its ``report.md``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from data.dicom import DicomOptions
from data.images import ImageDecodeError, decode_image
from data.manifest import data_root
from data.transforms import ToModelInput
from reporting.gallery import Gallery, GalleryCase, choose_cases, read_oof_rows
from reporting.report import report_from_run_dir
from reporting.run_summary import read_summary
from reporting.saliency import (DEFAULT_METHOD, EXPLAIN_METHODS, ClassLogits, as_rgb, class_heatmaps, save_overlay,
                                unique_file_names)
from training.checkpoint_format import SharedFiles
from training.ensemble import load_fold_model
from utils.device import select_device
from utils.errors import UserError, exit_status
from utils.io import read_json
from utils.logging_setup import get_logger, setup_logging
from utils.run_dir import RunDir

log = get_logger(__name__)


class GalleryError(UserError):
    """The gallery cannot be drawn for this folder."""


def draw_fold_cases(run: RunDir, fold: int, cases: Sequence[GalleryCase], file_names: Sequence[str],
                    data_dir: Path, device: torch.device, method: str, files: SharedFiles) -> list[GalleryCase]:
    """The pictures of ``cases`` (all validated by ``fold``); unreadable images are skipped with a warning."""
    checkpoint = run.model_checkpoint(fold)
    if checkpoint is None:
        log.warning("Gallery: fold %d has no checkpoint; its %d image(s) are left out", fold, len(cases))
        return []
    fold_model, meta = load_fold_model(fold, checkpoint, device, files=files)
    class_names = meta["class_names"]
    logits = ClassLogits(fold_model.model, fold_model.class_emb, fold_model.scale)
    to_input = ToModelInput()
    drawn = []
    for case, file_name in zip(cases, file_names):
        try:
            image = decode_image(data_dir / case.path, meta["img_size"], DicomOptions.from_config(meta["config"]))
        except (ImageDecodeError, OSError) as exc:
            log.warning("Gallery: %s left out: %s", case.path, exc)
            continue
        inputs = to_input(image).unsqueeze(0).to(device)
        heatmap = class_heatmaps(logits, inputs, [class_names.index(case.predicted_class)], method)[0]
        title = (f"{case.path} (fold {fold})\ntrue {case.true_class}, predicted {case.predicted_class} "
                 f"(p = {case.probability:.2f})")
        picture = save_overlay(run.gallery / file_name, as_rgb(image), heatmap, title)
        drawn.append(replace(case, picture=picture.relative_to(run.path).as_posix()))  # as report.md links it
    return drawn


def write_gallery(run: RunDir, device: torch.device, method: str) -> Gallery:
    """Choose the gallery's images from ``oof_predictions.csv``, draw them, and list them for report.md."""
    config = read_json(run.config, "run config")
    shutil.rmtree(run.gallery, ignore_errors=True)  # an earlier gallery's pictures
    cases = choose_cases(read_oof_rows(run.oof_predictions), read_summary(run.summary).class_names)
    names = unique_file_names([f"{case.true_class}_{case.kind}_{Path(case.path).with_suffix('')}" for case in cases])
    by_fold: dict[int, list[tuple[GalleryCase, str]]] = defaultdict(list)
    for case, name in zip(cases, names):
        by_fold[case.fold].append((case, name))
    drawn = []
    files = SharedFiles()  # the run's frozen_towers.pth, read once for every fold
    for fold, entries in sorted(by_fold.items()):
        fold_cases, file_names = zip(*entries)
        drawn += draw_fold_cases(run, fold, fold_cases, file_names,
                                 data_root(config.get("data_dir"), config.get("data_csv")), device, method, files)
    order = {case.path: k for k, case in enumerate(cases)}
    gallery = Gallery(method, sorted(drawn, key=lambda case: order[case.path]))
    gallery.write(run)
    return gallery


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.gallery",
                                     description="Draw the saliency gallery of a finished train_clip run and "
                                                 "rewrite its report.md.")
    parser.add_argument("run_dir", help="The run's --output-dir (holds cv_summary.json and the fold checkpoints).")
    parser.add_argument("--explain-method", choices=sorted(EXPLAIN_METHODS),
                        help="Heatmap method (default: the run's --explain-method).")
    parser.add_argument("--gpu-id", type=int, default=0, help="CUDA device index (default: %(default)s).")
    args = parser.parse_args(argv)
    setup_logging(None)
    return exit_status(lambda: redraw(RunDir(Path(args.run_dir)), args.explain_method, args.gpu_id))


def redraw(run: RunDir, explain_method: str | None, gpu_id: int) -> str:
    """Draw the gallery of a finished run again and rewrite its report.md; says what it wrote."""
    if not run.is_finished():
        raise GalleryError(f"{run.path} is not a finished train_clip run (no cv_summary.json, or a fold "
                           "without result.json)")
    method = explain_method or read_json(run.config, "run config").get("explain_method", DEFAULT_METHOD)
    gallery = write_gallery(run, select_device(gpu_id), method)
    reports = ", ".join(map(str, report_from_run_dir(run.path)))
    return f"drew {len(gallery.cases)} gallery picture(s) into {run.gallery}; wrote {reports}\n"


if __name__ == "__main__":
    sys.exit(main())
