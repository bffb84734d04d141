"""``python -m export.predict BUNDLE_DIR --images PATH [PATH ...] --output CSV``: classify images with an
exported bundle, with onnxruntime and no torch.

PATH is an image file, a folder (searched recursively, as predict.py does) or a CSV manifest with a
``path`` column. Images are decoded and normalised by the trainer's own torch-free functions
(:mod:`data.pixels`), with the DICOM window the run was trained with, and the CSV has predict.py's
columns (:mod:`reporting.prediction_csv`). The model file is checked against its SHA-256 first.
Nothing imported here imports torch (tests/export/test_predict.py runs it with torch unimportable).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime

from data.dicom import DicomOptions
from data.folder import DataError, list_images
from data.manifest import manifest_images
from data.pixels import (ImageDecodeError, decode_in_batches, decode_pixels, describe_failures, normalise,
                         source_is_dicom)
from export.layout import read_metadata, verified_model
from reporting.prediction_csv import write_predictions
from utils.errors import UserError
from utils.io import check_writable
from utils.logging_setup import setup_logging

log = logging.getLogger("train_clip.export.predict")


class RunnerError(UserError, ValueError):
    """A bad flag value of the runner; the message is meant for the user."""



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.predict",
        description="Classify images with a bundle written by python -m export (onnxruntime, no torch).")
    parser.add_argument("bundle", metavar="BUNDLE_DIR", help="The bundle folder (configs/metadata.json, models/).")
    parser.add_argument("--images", required=True, nargs="+", metavar="PATH",
                        help="Image files, folders (searched recursively) or CSV manifests with a path column.")
    parser.add_argument("--output", default="predictions.csv", metavar="CSV",
                        help="CSV to write: path, predicted_class, prob_<class> ... (default: %(default)s).")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="Images per forward pass (default: %(default)s).")
    return parser


def collect_images(paths: Sequence[str]) -> list[tuple[Path, str]]:
    """(file, name in the CSV) of every PATH, in the order given; a file named twice is kept once."""
    found: dict[Path, str] = {}
    for text in paths:
        path = Path(text)
        listed = (manifest_images(path, "--images") if path.suffix.lower() == ".csv" and path.is_file()
                  else list_images(path))
        for image, name in listed:
            found.setdefault(image.resolve(), name)
    return [(image, name) for image, name in found.items()]


def batches(files: Sequence[tuple[Path, str]], img_size: int, dicom: DicomOptions, batch_size: int,
            failures: list[tuple[str, str]]) -> Iterator[tuple[list[str], np.ndarray]]:
    """(names, model input) batches; unreadable files go to ``failures``."""
    def decode(path: Path) -> np.ndarray | str:
        try:
            return normalise(decode_pixels(path, img_size, dicom if source_is_dicom(path) else None))
        except ImageDecodeError as exc:
            return str(exc)

    for names, inputs in decode_in_batches(files, decode, batch_size, failures):
        yield names, np.stack(inputs)


def classify(args: argparse.Namespace) -> tuple[list[str], list[str], np.ndarray, int]:
    """Names of the classified images, class names, probabilities, and how many files were skipped."""
    if args.batch_size < 1:
        raise RunnerError(f"--batch-size must be at least 1, got {args.batch_size}")
    bundle = Path(args.bundle)
    metadata = read_metadata(bundle)
    model = verified_model(bundle, metadata, "onnx")
    if Path(args.output).is_dir():
        raise RunnerError(f"--output {args.output} is a folder; give a file name such as predictions.csv")
    check_writable(Path(args.output), "--output")
    files = collect_images(args.images)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    preprocessing = metadata["preprocessing"]
    dicom = DicomOptions(preprocessing["dicom"]["window"], preprocessing["dicom"]["first_frame"])
    failures: list[tuple[str, str]] = []
    names, probs = [], []
    for batch_names, inputs in batches(files, preprocessing["img_size"], dicom, args.batch_size, failures):
        names += batch_names
        probs.append(session.run(None, {input_name: inputs})[0])
    if failures:
        log.warning("Skipping %d unreadable image(s): %s", len(failures), describe_failures(failures))
    if not names:
        raise DataError(f"--images: none of the {len(files)} image file(s) could be read")
    return names, metadata["classes"], np.concatenate(probs), len(failures)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(None)
    try:
        names, class_names, probs, skipped = classify(args)
        write_predictions(args.output, names, class_names, probs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = np.bincount(probs.argmax(axis=1), minlength=len(class_names))
    skipped_note = f"; skipped {skipped} unreadable" if skipped else ""
    print(f"Classified {len(names)} image(s) with {args.bundle}{skipped_note}")
    print("Predicted: " + ", ".join(f"{name} {n}" for name, n in zip(class_names, counts)))
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
