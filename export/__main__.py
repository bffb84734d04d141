"""``python -m export RUN_DIR --output DIR [--fold K | --ensemble] [--format onnx torchscript] [--overwrite]``

Loads the run's fold models exactly as predict.py does (training.ensemble: a finished run only,
checkpoints rebuilt alone, frozen_towers.pth read once) and writes the bundle (export/layout.py).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Sequence

import torch

from export.bundle import ExportedRun, check_output, write_bundle
from export.formats import export_onnx, export_torchscript
from export.graph import ExportedClassifier
from export.layout import MODEL_FILES
from reporting.run_summary import read_summary
from training.ensemble import RunModelsError, checkpoint_paths, load_models
from utils.errors import UserError
from utils.logging_setup import setup_logging
from utils.run_dir import RunDir

WRITERS = {"onnx": export_onnx, "torchscript": export_torchscript}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a finished train_clip run to one image-only model (ONNX and TorchScript) in a "
                    "MONAI-style bundle folder, runnable without this repository or torch.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="The run's --output-dir (a finished run).")
    parser.add_argument("--output", required=True, metavar="DIR", help="Bundle folder to write.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, metavar="K", help="Export fold K's model only.")
    which.add_argument("--ensemble", action="store_true",
                       help="Export all folds in one graph, their probabilities averaged as predict.py does "
                            "(the default).")
    parser.add_argument("--format", nargs="+", choices=sorted(MODEL_FILES), default=["onnx", "torchscript"],
                        dest="formats", metavar="FORMAT",
                        help="Model files to write: onnx, torchscript or both (default: both).")
    parser.add_argument("--overwrite", action="store_true", help="Replace the bundle already in --output.")
    return parser


def export_run(args: argparse.Namespace) -> dict:
    """Check everything, load the fold models, write the bundle; returns its metadata."""
    if args.fold is not None and args.fold < 1:
        raise RunModelsError(f"--fold must be at least 1, got {args.fold}")
    run_dir = RunDir(Path(args.run_dir))
    checkpoints = checkpoint_paths(run_dir, args.fold, None, flag="RUN_DIR")
    output = Path(args.output)
    check_output(output, args.overwrite)
    # The exported graph is device-free; on the CPU the fold models stay float32, as predict.py --cpu runs them.
    loaded = load_models(checkpoints, torch.device("cpu"), None)
    # Read through the summary's one schema: a cv_summary.json this trainer did not write is refused by name.
    run = ExportedRun(run_dir.path, loaded, read_summary(run_dir.summary))
    model = ExportedClassifier(loaded.models)
    encoder = loaded.config["image_encoder"]
    writers = {fmt: partial(WRITERS[fmt], model, img_size=run.img_size, encoder=encoder)
               for fmt in dict.fromkeys(args.formats)}
    return write_bundle(output, run, writers)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(None)
    try:
        meta = export_run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folds = ", ".join(str(f["fold"]) for f in meta["folds"])
    print(f"Exported fold(s) {folds} of {args.run_dir} to {args.output}: "
          + ", ".join(f"{name} (sha256 {digest[:12]})" for name, digest in meta["files"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
