"""The bundle: ``configs/metadata.json`` (what the receiving side needs to feed the model and trust
its numbers), the model files and a README, written so that nothing already there is lost.

The bundle is built in a temporary folder beside ``--output`` and moved in only when complete: a
failed export leaves an existing bundle as it was.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from data.dicom import DicomOptions
from data.pixels import IMAGENET_MEAN, IMAGENET_STD
from export.formats import OPSET
from export.layout import BUNDLE_PATHS, FORMAT_VERSION, METADATA, MODEL_FILES, README, BundleError
from reporting.methods import run_environment
from reporting.run_summary import RunSummary
from reporting.summary import interval_note, operating_point_note
from training.ensemble import FoldModel, RunModels
from utils.io import file_sha256, write_json

SUMMARY_KEYS = ("mode", "n_splits", "monitor", "selection", "mean", "std", "oof", "oof_ci", "oof_per_class_ci",
                "ci_settings", "calibration")
DICOM_RULE = ("stored values → modality LUT (RescaleSlope/Intercept) → window (auto: the file's VOI LUT or first "
              "window if any; none: the full range; C,W: that window) → stretched over the values' range to "
              "0..255; MONOCHROME1 inverted; colour DICOM as RGB")


@dataclass(frozen=True)
class ExportedRun:
    """What the bundle describes: the run folder, its fold models (as predict.py loads them) and its
    cv_summary.json."""

    run_dir: Path
    loaded: RunModels
    summary: RunSummary

    @property
    def fold_models(self) -> list[FoldModel]:
        return self.loaded.models

    @property
    def fold_meta(self) -> list[dict[str, Any]]:
        return self.loaded.metas

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    @property
    def img_size(self) -> int:
        return self.loaded.img_size

    @property
    def config(self) -> dict[str, Any]:
        return self.loaded.config


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse a bundle folder that holds anything unless ``overwrite`` (an empty folder is fine);
    ``overwrite`` replaces a bundle's own files only, so a folder of other things is refused."""
    if output.is_file():
        raise BundleError(f"--output {output} is a file; give a folder for the bundle")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not overwrite:
        raise BundleError(f"--output {output} already exists and is not empty; pass --overwrite to replace "
                          "the bundle in it")
    ours = {part.parts[0] for part in BUNDLE_PATHS}
    foreign = sorted(p.name for p in output.iterdir() if p.name not in ours)
    if foreign:
        raise BundleError(f"--output {output} holds files that are not a bundle's ({', '.join(foreign[:5])}); "
                          "--overwrite replaces bundles only: give another folder")


def metadata(run: ExportedRun, formats: list[str], files: Mapping[str, str]) -> dict[str, Any]:
    names = run.class_names
    texts = run.fold_models[0].model.class_texts
    dicom = DicomOptions.from_config(run.config)
    environment = run.summary.environment
    summary = run.summary.to_document()  # its keys, as cv_summary.json spells them
    return {
        "format_version": FORMAT_VERSION,
        "task": "image classification (CLIP-style, class descriptions baked in)",
        "description": f"train_clip run {run.run_dir.name}: {run.config['image_encoder']} / "
                       f"{run.config['text_encoder']}, " + ("ensemble of folds " if len(run.fold_models) > 1
                                                              else "fold ") + _folds(run),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run.run_dir.resolve()),
        "image_encoder": run.config["image_encoder"],
        "text_encoder": run.config["text_encoder"],
        "classes": names,
        "class_texts": {name: list(t) for name, t in zip(names, texts)},
        "folds": [{"fold": m.fold, "checkpoint": f"fold_{m.fold}/{meta['file']}", "epoch": meta["epoch"],
                   "temperature": m.temperature} for m, meta in zip(run.fold_models, run.fold_meta)],
        "ensemble": "mean of the folds' probabilities" if len(run.fold_models) > 1 else None,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "dtype": "float32", "num_channels": 3,
                                 "spatial_shape": [run.img_size, run.img_size], "shape": ["N", 3, run.img_size,
                                                                                          run.img_size]}},
            "outputs": {"probabilities": {"type": "probabilities", "dtype": "float32", "num_channels": len(names),
                                          "shape": ["N", len(names)],
                                          "channel_def": {str(k): name for k, name in enumerate(names)}}}},
        "preprocessing": {
            "img_size": run.img_size,
            "steps": ["decode (PNG/JPEG/...: EXIF orientation applied; 16-bit and float grayscale stretched over "
                      "its own range to 0..255; alpha composited on black; DICOM: see dicom)",
                      f"resize so the longer side is {run.img_size} (PIL bicubic, reducing_gap=3.0)",
                      f"pad to a {run.img_size}x{run.img_size} square with black, image centred",
                      "scale to [0, 1] (divide by 255); grayscale repeated on 3 channels",
                      "subtract mean, divide by std, per channel (RGB order)"],
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "dicom": {"window": dicom.window, "first_frame": dicom.first_frame, "rule": DICOM_RULE},
        },
        "metrics": {key: summary[key] for key in SUMMARY_KEYS if key in summary},
        "operating_point": run.summary.section("operating_point"),
        "training": {"commit": environment.get("train_clip_commit"), "versions": environment.get("versions", {})},
        "export": {**run_environment("cpu", None), "onnx_opset": OPSET,
                   **{package: importlib.metadata.version(package) for package in ("onnx", "onnxruntime")}},
        "formats": formats,
        "files": dict(files),
    }


def _folds(run: ExportedRun) -> str:
    return ", ".join(str(m.fold) for m in run.fold_models)


def readme(run: ExportedRun, meta: Mapping[str, Any]) -> str:
    names = ", ".join(run.class_names)
    size = run.img_size
    lines = [
        f"# {meta['description']}",
        "",
        f"Classifies an image into: {names}. Exported by `python -m export` from {meta['run_dir']}.",
        "",
        "## Files",
        "",
        "- `models/model.onnx`: ONNX (opset in `configs/metadata.json`), for onnxruntime in any language.",
        "- `models/model.ts`: the same model as TorchScript (`torch.jit.load`; MONAI Deploy loads this file).",
        "- `configs/metadata.json`: classes, preprocessing, the run's cross-validated metrics, versions, and the "
        "SHA-256 of each model file (check it before use).",
        "",
        "## Input and output",
        "",
        f"Input `image`: float32 (N, 3, {size}, {size}), any N. Output `probabilities`: float32 (N, "
        f"{len(run.class_names)}), one row per image, classes in the order above; each row sums to 1"
        + (" and is the mean of the folds' probabilities." if len(run.fold_models) > 1 else "."),
        "",
        "Preprocessing (exactly as in training; `preprocessing` in the metadata):",
        "",
        *[f"{k}. {step}" for k, step in enumerate(meta["preprocessing"]["steps"], start=1)],
        "",
        f"mean = {list(IMAGENET_MEAN)}, std = {list(IMAGENET_STD)}. DICOM: window "
        f"`{meta['preprocessing']['dicom']['window']}`; {DICOM_RULE}.",
        "",
        "With this repository's torch-free runner (numpy, Pillow, pydicom, onnxruntime):",
        "",
        "    python -m export.predict BUNDLE_DIR --images FOLDER_OR_FILES_OR_MANIFEST.csv --output predictions.csv",
        "",
        "## How good it is",
        "",
        *_metric_lines(run.summary),
        "",
        "These are cross-validated estimates on the training institution's images; check the model on local "
        "images before clinical use.",
    ]
    return "\n".join(lines) + "\n"


def _metric_lines(summary: RunSummary) -> list[str]:
    ci = summary.section("oof_ci") or {}
    lines = [f"- {name}: {value:.3f}" + (f" (95% CI {ci[name][0]:.3f}-{ci[name][1]:.3f})" if name in ci else "")
             for name, value in summary.oof.items() if isinstance(value, (int, float))]
    notes = [note for note in (interval_note(summary), operating_point_note(summary)) if note]
    return (["Pooled out-of-fold predictions:", ""] + lines if lines else ["No metrics recorded."]) + \
        ([""] + notes if notes else [])


def write_bundle(output: Path, run: ExportedRun, writers: Mapping[str, Callable[[Path], None]]) -> dict[str, Any]:
    """Write every format of ``writers`` (format → function writing the model file), the metadata and
    the README; returns the metadata. The bundle appears in ``output`` only once complete."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        files = {}
        for fmt, write in writers.items():
            path = staging / MODEL_FILES[fmt]
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            files[MODEL_FILES[fmt].as_posix()] = file_sha256(path)
        meta = metadata(run, list(writers), files)
        (staging / METADATA).parent.mkdir(parents=True, exist_ok=True)
        write_json(staging / METADATA, meta)
        (staging / README).write_text(readme(run, meta), encoding="utf-8")
        _move_in(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _move_in(staging: Path, output: Path) -> None:
    """Replace the bundle files in ``output`` with ``staging``'s (check_output made sure only a
    bundle's own files are there)."""
    output.mkdir(parents=True, exist_ok=True)
    for relative in BUNDLE_PATHS:
        old = output / relative
        if old.exists():
            old.unlink()
    for relative in BUNDLE_PATHS:
        new = staging / relative
        if new.exists():
            (output / relative).parent.mkdir(parents=True, exist_ok=True)
            new.replace(output / relative)
