#!/usr/bin/env python3
"""predict.py: classify images with the fold models of a finished train_clip run.

    python predict.py --run-dir OUTPUT_DIR --images PATH [--output predictions.csv] [--fold K]
                      [--explain HEATMAP_DIR [--explain-method gradcam|gradcam++|eigencam]]

Each fold model is rebuilt from its checkpoint alone (architecture, class texts and a HuggingFace
text tower's tokenizer and config are stored in it; weights load with ``weights_only=True``).
By default the probabilities of all fold models are averaged (an ensemble); ``--fold K`` uses
one. Images are preprocessed exactly as validation images were during training, and scored
exactly as ``train_clip.evaluate`` does, so ``--fold K`` on fold K's validation images
reproduces its logged validation metrics.
``--class-texts-file`` replaces the class descriptions: the trained towers then classify into
the classes of that file (zero-shot). ``--explain`` also draws where the models looked
(reporting/saliency.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from data.dicom import DicomOptions
from data.folder import IMAGE_EXTENSIONS, list_images
from data.images import decode_image
from data.pixels import ImageDecodeError, decode_in_batches, describe_failures
from data.texts import load_class_texts
from data.transforms import ToModelInput
from models.text_checks import text_warnings
from reporting.prediction_csv import write_predictions
from reporting.saliency import (DEFAULT_METHOD, EXPLAIN_METHODS, ClassLogits, as_rgb, mean_heatmaps, save_overlay,
                                target_layer, unique_file_names)
from training.ensemble import FoldModel, checkpoint_paths, ensemble_probs, load_models
from utils.device import mixed_precision_dtype, select_device
from utils.errors import UserError
from utils.io import check_writable, read_json
from utils.logging_setup import setup_logging
from utils.run_dir import RunDir

log = logging.getLogger("train_clip.predict")



class PredictError(UserError, ValueError):
    """Bad input to predict.py; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Classify an image or a folder of images with the fold models of a train_clip run "
                    "(mean of their probabilities, or one fold with --fold).")
    parser.add_argument("--run-dir", required=True, metavar="DIR",
                        help="The run's --output-dir (holds fold_K/checkpoint_best.pth).")
    parser.add_argument("--images", required=True, metavar="PATH",
                        help="An image file, or a folder searched recursively for images "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    parser.add_argument("--output", default="predictions.csv", metavar="CSV",
                        help="CSV to write: path, predicted_class, prob_<class> ... (default: %(default)s).")
    parser.add_argument("--fold", type=int, metavar="K", help="Use fold K's model only (default: all folds).")
    parser.add_argument("--class-texts-file", metavar="FILE",
                        help="JSON mapping class names to descriptions: classify into these classes, in "
                             "file order, instead of the trained ones (zero-shot with the trained towers).")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="Images per forward pass (default: %(default)s).")
    parser.add_argument("--gpu-id", type=int, default=0, metavar="N",
                        help="CUDA device index (the CPU is used when CUDA is not available).")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even when CUDA is available.")
    parser.add_argument("--explain", metavar="DIR",
                        help="Also write one PNG per image into DIR: the image and a heatmap of where the model "
                             "looked for its predicted class (with several folds, the mean of their heatmaps).")
    parser.add_argument("--explain-method", choices=sorted(EXPLAIN_METHODS), default=DEFAULT_METHOD,
                        help="Heatmap method for --explain (default: %(default)s).")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="Use a run that has not finished (a fold without result.json, no cv_summary.json): "
                             "its models are not the final ones; the folds used are listed with their epochs.")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.fold is not None and args.fold < 1:
        raise PredictError(f"--fold must be at least 1, got {args.fold}")
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.gpu_id < 0:
        raise PredictError(f"--gpu-id must be non-negative, got {args.gpu_id}")
    if Path(args.output).is_dir():
        raise PredictError(f"--output {args.output} is a folder; give a file name such as predictions.csv")
    if args.explain is not None and Path(args.explain).is_file():
        raise PredictError(f"--explain {args.explain} is a file; give a folder for the heatmap pictures")


def load_new_class_texts(path: str) -> tuple[list[str], list[list[str]]]:
    """Class names (file order) and descriptions from a ``--class-texts-file``."""
    try:
        data = read_json(path, "--class-texts-file")
    except ValueError as exc:
        raise PredictError(str(exc)) from exc
    if not isinstance(data, dict) or len(data) < 2:
        raise PredictError(f"--class-texts-file {path} must hold a JSON object with at least two classes "
                           "(class name → description or list of descriptions)")
    names = list(data)
    return names, load_class_texts(names, path, None)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
@dataclass
class Batch:
    names: list[str]
    decoded: list[torch.Tensor]  # uint8 (C, H, W) as decoded, for the --explain pictures
    inputs: torch.Tensor  # model input, preprocessed as validation images


def decoded_batches(files: Sequence[tuple[Path, str]], img_size: int, batch_size: int,
                    failures: list[tuple[str, str]], dicom: DicomOptions) -> Iterator[Batch]:
    """Batches of images preprocessed as validation images (DICOM windowed as in training); unreadable
    files go to ``failures``."""
    to_input = ToModelInput()

    def decode(path: Path) -> torch.Tensor | str:
        try:
            return decode_image(path, img_size, dicom)
        except ImageDecodeError as exc:
            return str(exc)

    for names, decoded in decode_in_batches(files, decode, batch_size, failures):
        yield Batch(names, decoded, torch.stack([to_input(image) for image in decoded]))


def warn_failures(failures: Sequence[tuple[str, str]]) -> None:
    if failures:
        log.warning("Skipping %d unreadable image(s): %s", len(failures), describe_failures(failures))


def predict(args: argparse.Namespace) -> tuple[list[str], list[str], np.ndarray, list[FoldModel], int]:
    """Names of the classified images, class names, their probabilities, the models, skipped count."""
    check_args(args)
    checkpoints = checkpoint_paths(RunDir(Path(args.run_dir)), args.fold, args.allow_unfinished)
    check_writable(Path(args.output), "--output")
    new_names, new_texts = (load_new_class_texts(args.class_texts_file) if args.class_texts_file
                            else (None, None))
    files = list_images(Path(args.images))
    device = select_device(args.gpu_id, args.cpu)
    if device.type == "cpu" and not args.cpu:
        log.info("CUDA is not available: predicting on the CPU")
    loaded = load_models(checkpoints, device, new_texts)
    models, class_names, img_size, config = loaded.models, loaded.class_names, loaded.img_size, loaded.config
    class_names = new_names or class_names
    if new_texts is not None:  # new descriptions: the checks training makes at start-up
        for line in text_warnings(models[0].model.text_encoder, config["text_encoder"], class_names, new_texts):
            log.warning("%s", line)
    amp_dtype = mixed_precision_dtype(device, config.get("amp", True))  # as training validated
    failures: list[tuple[str, str]] = []
    names, probs = [], []
    dicom = DicomOptions.from_config(config)
    explain = Explanations.start(args, files, models, class_names)
    for batch in decoded_batches(files, img_size, args.batch_size, failures, dicom):
        names += batch.names
        probs.append(ensemble_probs(models, batch.inputs, device, amp_dtype))
        if explain is not None:
            explain.write(batch, probs[-1], device)
    warn_failures(failures)
    if not names:
        raise PredictError(f"--images {args.images}: none of the {len(files)} image file(s) could be read")
    return names, class_names, np.concatenate(probs), models, len(failures)


@dataclass
class Explanations:
    """``--explain``: one picture per image of where the models looked for the predicted class.

    With several folds each fold's heatmap (scaled to [0, 1]) is computed for the ensemble's
    predicted class and the heatmaps are averaged, so the picture explains the ensemble's answer.
    """

    out_dir: Path
    method: str
    models: list[ClassLogits]
    class_names: list[str]
    file_names: dict[str, str]  # image name → PNG name, unique, safe for any file system

    @classmethod
    def start(cls, args: argparse.Namespace, files: Sequence[tuple[Path, str]], models: Sequence[FoldModel],
              class_names: list[str]) -> Explanations | None:
        if args.explain is None:
            return None
        for model in models:
            target_layer(model.model)  # a model with no known heatmap layer is refused before anything is written
        out_dir = Path(args.explain)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PredictError(f"--explain {out_dir} cannot be created: {exc.strerror or exc}") from None
        names = [name for _, name in files]
        pictures = unique_file_names([str(Path(name).with_suffix("")) for name in names])
        return cls(out_dir, args.explain_method, [ClassLogits(m.model, m.class_emb, m.scale) for m in models],
                   class_names, dict(zip(names, pictures)))

    def write(self, batch: Batch, probs: np.ndarray, device: torch.device) -> None:
        predicted = probs.argmax(axis=1)
        heatmaps = mean_heatmaps(self.models, batch.inputs.to(device), predicted.tolist(), self.method)
        for name, image, heatmap, p, k in zip(batch.names, batch.decoded, heatmaps, probs, predicted):
            title = f"{name}\npredicted {self.class_names[k]} (p = {p[k]:.2f}), {self.method}"
            save_overlay(self.out_dir / self.file_names[name], as_rgb(image), heatmap, title)


def print_summary(names: Sequence[str], class_names: Sequence[str], probs: np.ndarray,
                  models: Sequence[FoldModel], skipped: int, output: str, explain_dir: str | None) -> None:
    folds = ", ".join(str(m.fold) for m in models)
    how = f"the ensemble of folds {folds} (mean probability)" if len(models) > 1 else f"fold {folds}"
    counts = np.bincount(probs.argmax(axis=1), minlength=len(class_names))
    print(f"Classified {len(names)} image(s) with {how}" + (f"; skipped {skipped} unreadable" if skipped else ""))
    print("Predicted: " + ", ".join(f"{name} {n}" for name, n in zip(class_names, counts)))
    print(f"Wrote {output}")
    if explain_dir is not None:
        print(f"Wrote {len(names)} heatmap picture(s) into {explain_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(None)
    try:
        names, class_names, probs, models, skipped = predict(args)
        write_predictions(args.output, names, class_names, probs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(names, class_names, probs, models, skipped, args.output, args.explain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
