#!/usr/bin/env python3
"""predict.py: classify images with the fold models of a finished train_clip run.

    python predict.py --run-dir OUTPUT_DIR --images PATH [--output predictions.csv] [--fold K]

Each fold model is rebuilt from its checkpoint alone (architecture, class texts and a HuggingFace
text tower's tokenizer and config are stored in it; weights load with ``weights_only=True``).
By default the probabilities of all fold models are averaged (an ensemble); ``--fold K`` uses
one. Images are preprocessed exactly as validation images were during training, and scored
exactly as ``train_clip.evaluate`` does, so ``--fold K`` on fold K's validation images
reproduces its logged validation metrics.
``--class-texts-file`` replaces the class descriptions: the trained towers then classify into
the classes of that file (zero-shot).
"""
from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from data.dicom import DicomOptions
from data.folder import IMAGE_EXTENSIONS, display_path, find_images, printable
from data.images import ImageDecodeError, decode_image, describe_failures
from data.texts import load_class_texts
from data.transforms import ToModelInput
from models.clip_model import build_clip_model, model_kwargs_from_config
from models.names import UnknownEncoderError, WeightsNotFoundError
from training.ensemble import FoldModel, ensemble_probs
from utils.device import mixed_precision_dtype, select_device
from utils.errors import UserError
from utils.io import CheckpointError, check_writable, load_checkpoint, read_json, write_csv
from utils.logging_setup import setup_logging
from utils.run_dir import RunDir

log = logging.getLogger("train_clip.predict")

CHECKPOINT_KEYS = ("model", "config", "class_names", "class_texts")
DECODE_THREADS = 4  # PIL releases the GIL while decoding


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


# ---------------------------------------------------------------------------------------------
# Checkpoints and models
# ---------------------------------------------------------------------------------------------
def checkpoint_paths(run_dir: RunDir, fold: int | None, allow_unfinished: bool) -> list[tuple[int, Path]]:
    """(fold, checkpoint) of the requested folds: ``checkpoint_best.pth``, else ``checkpoint_latest.pth``.

    An unfinished run is refused unless ``allow_unfinished``: its best checkpoints may still be the
    untrained epoch 0 and some folds may be missing. A run trained with ``--no-save-best`` has only
    the latest checkpoints of finished folds: they are its final models and are used then.
    """
    if not run_dir.path.is_dir():
        raise PredictError(f"--run-dir {run_dir.path} does not exist or is not a folder")
    found = {k: path for k in run_dir.fold_numbers()
             for path in [run_dir.best_checkpoint(k), run_dir.latest_checkpoint(k)][::-1] if path.is_file()}
    if not found:
        raise PredictError(f"--run-dir {run_dir.path} holds no fold_K/checkpoint_best.pth: not a train_clip run "
                           "folder")
    if fold is not None:
        if fold not in found:
            raise PredictError(f"--fold {fold}: {run_dir.path} has no checkpoint for fold {fold} (folds: "
                               f"{', '.join(map(str, sorted(found)))})")
        found = {fold: found[fold]}
    check_finished(run_dir, allow_unfinished)
    return sorted(found.items())


def check_finished(run_dir: RunDir, allow_unfinished: bool) -> None:
    unfinished = run_dir.unfinished_folds()
    missing_summary = not run_dir.summary.is_file()
    if not (unfinished or missing_summary):
        return
    what = (f"fold(s) {', '.join(map(str, unfinished))} have no result.json" if unfinished
            else f"it has no {run_dir.summary.name}")
    if not allow_unfinished:
        raise PredictError(f"--run-dir {run_dir.path} is not a finished run ({what}): its checkpoints are not "
                           "the final models; finish it with train_clip.py --resume, or pass --allow-unfinished")
    log.warning("--allow-unfinished: %s is not a finished run (%s)", run_dir.path, what)


def load_fold_model(fold: int, path: Path, device: torch.device,
                    class_texts: list[list[str]] | None) -> tuple[FoldModel, dict]:
    """Rebuild fold ``fold``'s classifier from its checkpoint; returns it and the checkpoint's metadata."""
    state = load_checkpoint(path, CHECKPOINT_KEYS)
    config = state["config"]
    try:
        kwargs = model_kwargs_from_config(config)
        img_size = int(config["img_size"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its config lacks {exc}") from exc
    try:
        # Checkpoints carry a HuggingFace text tower's tokenizer and config: no folder or cache needed.
        model = build_clip_model(**kwargs, class_texts=state["class_texts"], load_pretrained=False,
                                 text_files=state.get("text_encoder_files"))
    except (UnknownEncoderError, WeightsNotFoundError) as exc:
        raise type(exc)(f"cannot rebuild the model of {path}: {exc}") from exc
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: {first}") from exc
    if class_texts is not None:
        model.set_class_texts(class_texts)
    model.to(device).eval()
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    fold_model = FoldModel.prepare(model, fold)
    meta = {"class_names": list(state["class_names"]), "img_size": img_size,
            "config": config, "epoch": state.get("epoch"), "file": path.name}
    return fold_model, meta


def load_models(checkpoints: Sequence[tuple[int, Path]], device: torch.device,
                class_texts: list[list[str]] | None) -> tuple[list[FoldModel], list[str], int, dict]:
    """Every fold model of ``checkpoints``; they must agree on classes and input size."""
    models, first = [], None
    for number, path in checkpoints:
        fold_model, meta = load_fold_model(number, path, device, class_texts)
        describe_fold_model(number, meta)
        if first is None:
            first = meta
        elif (meta["class_names"], meta["img_size"]) != (first["class_names"], first["img_size"]):
            raise PredictError(f"{path} has other classes or input size than fold {models[0].fold}'s "
                               "checkpoint; the fold models are not from one run")
        models.append(fold_model)
    return models, first["class_names"], first["img_size"], first["config"]


def describe_fold_model(fold: int, meta: dict) -> None:
    """Say which checkpoint a fold uses, and warn when it is the untrained model of epoch 0."""
    log.info("fold %d: %s (epoch %s)", fold, meta["file"], meta["epoch"])
    if meta["epoch"] == 0:
        log.warning("fold %d: its model is epoch 0, the untrained (zero-shot) model: training never improved "
                    "on it", fold)


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
def list_images(images: Path) -> list[tuple[Path, str]]:
    """(file, name shown in the CSV): a single file as given, or a folder's images relative to it.

    Folders are searched recursively; hidden files and folders are skipped; order is by path.
    """
    if images.is_file():
        return [(images, printable(str(images)))]
    if not images.is_dir():
        raise PredictError(f"--images {images} does not exist")
    found = [(path, display_path(path, images)) for path in find_images(images)]
    if not found:
        raise PredictError(f"--images {images} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(found, key=lambda item: item[1])


def decoded_batches(files: Sequence[tuple[Path, str]], img_size: int, batch_size: int,
                    failures: list[tuple[str, str]],
                    dicom: DicomOptions) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Batches of (names, model input) preprocessed as validation images (DICOM windowed as in training);
    unreadable files go to ``failures``."""
    to_input = ToModelInput()

    def decode(path: Path) -> torch.Tensor | str:
        try:
            return decode_image(path, img_size, dicom)
        except ImageDecodeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            names, tensors = [], []
            for (_, name), result in zip(chunk, pool.map(decode, [p for p, _ in chunk])):
                if isinstance(result, str):
                    failures.append((name, result))
                else:
                    names.append(name)
                    tensors.append(to_input(result))
            if tensors:
                yield names, torch.stack(tensors)


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
    models, class_names, img_size, config = load_models(checkpoints, device, new_texts)
    class_names = new_names or class_names
    amp_dtype = mixed_precision_dtype(device, config.get("amp", True))  # as training validated
    failures: list[tuple[str, str]] = []
    names, probs = [], []
    dicom = DicomOptions(config.get("dicom_window", "auto"), config.get("dicom_first_frame", False))
    for batch_names, images in decoded_batches(files, img_size, args.batch_size, failures, dicom):
        names += batch_names
        probs.append(ensemble_probs(models, images, device, amp_dtype))
    warn_failures(failures)
    if not names:
        raise PredictError(f"--images {args.images}: none of the {len(files)} image file(s) could be read")
    return names, class_names, np.concatenate(probs), models, len(failures)


def write_predictions(path: str, names: Sequence[str], class_names: Sequence[str], probs: np.ndarray) -> None:
    write_csv(path, ["path", "predicted_class"] + [f"prob_{name}" for name in class_names],
              [[name, class_names[int(p.argmax())]] + [f"{v:.6f}" for v in p] for name, p in zip(names, probs)])


def print_summary(names: Sequence[str], class_names: Sequence[str], probs: np.ndarray,
                  models: Sequence[FoldModel], skipped: int, output: str) -> None:
    folds = ", ".join(str(m.fold) for m in models)
    how = f"the ensemble of folds {folds} (mean probability)" if len(models) > 1 else f"fold {folds}"
    counts = np.bincount(probs.argmax(axis=1), minlength=len(class_names))
    print(f"Classified {len(names)} image(s) with {how}" + (f"; skipped {skipped} unreadable" if skipped else ""))
    print("Predicted: " + ", ".join(f"{name} {n}" for name, n in zip(class_names, counts)))
    print(f"Wrote {output}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(None)
    try:
        names, class_names, probs, models, skipped = predict(args)
        write_predictions(args.output, names, class_names, probs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(names, class_names, probs, models, skipped, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
