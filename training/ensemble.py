"""Scoring images with fold models, alone or as an ensemble: one implementation for the trainer's
validation and held-out test set and for predict.py, so the numbers agree exactly. A fold model
is rebuilt from its checkpoint alone (:func:`load_fold_model`) by predict.py and the gallery.

An image's probabilities are ``softmax(scale · image_emb @ class_emb.T)``; the class embeddings
and the scale are computed once per model, outside autocast. An ensemble averages the fold
models' probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.clip_model import CLIPClassifier, build_clip_model, model_kwargs_from_config
from models.names import UnknownEncoderError, WeightsNotFoundError
from reporting.calibration import apply_temperature
from training.checkpoint_format import SharedFiles, full_model_state
from utils.device import autocast, to_device
from utils.checksums import load_recorded
from utils.io import CheckpointError

CHECKPOINT_KEYS = ("model", "config", "class_names", "class_texts")


@dataclass
class FoldModel:
    """One fold's classifier with its class embeddings and logit scale computed once."""

    fold: int
    model: CLIPClassifier
    class_emb: torch.Tensor
    scale: torch.Tensor
    temperature: float = 1.0  # --calibrate temperature: fitted after training, stored in the checkpoint

    @classmethod
    @torch.no_grad()
    def prepare(cls, model: CLIPClassifier, fold: int = 0, temperature: float = 1.0) -> FoldModel:
        model.eval()
        return cls(fold, model, model.encode_classes(), model.scale(), temperature)


@torch.no_grad()
def image_logits(fold_model: FoldModel, images: torch.Tensor, device: torch.device,
                 amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Logits of a batch against every class (images are moved to ``device`` here)."""
    with autocast(device, amp_dtype):
        image_emb = fold_model.model.encode_images(to_device(images, device))
    return CLIPClassifier.logits(image_emb, fold_model.class_emb, fold_model.scale)


@torch.no_grad()
def ensemble_probs(models: Sequence[FoldModel], images: torch.Tensor, device: torch.device,
                   amp_dtype: torch.dtype | None) -> np.ndarray:
    """Mean over ``models`` of each one's class probabilities (calibrated with its temperature) for a batch."""
    # apply_temperature is the trainer's own calibration, so a test set scores the same here and there.
    return np.mean([apply_temperature(image_logits(m, images, device, amp_dtype).softmax(dim=1).cpu().numpy(),
                                      m.temperature) for m in models], axis=0)


def load_fold_model(fold: int, path: Path, device: torch.device, class_texts: list[list[str]] | None = None,
                    files: SharedFiles | None = None) -> tuple[FoldModel, dict]:
    """Rebuild fold ``fold``'s classifier from its checkpoint; returns it and the checkpoint's metadata.
    ``files``: the run files already read (one for all folds of a run)."""
    state = load_recorded(path, CHECKPOINT_KEYS)  # refused when not the file that was written
    config = state["config"]
    try:
        kwargs = model_kwargs_from_config(config)
        img_size = int(config["img_size"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its config lacks {exc}") from exc
    try:
        # Checkpoints carry a HuggingFace text tower's tokenizer and config: no folder or cache needed.
        model = build_clip_model(**kwargs, class_texts=state["class_texts"], load_pretrained=False,
                                 text_files=state.get("text_encoder_files"),
                                 image_files=state.get("image_encoder_files"))
    except (UnknownEncoderError, WeightsNotFoundError) as exc:
        raise type(exc)(f"cannot rebuild the model of {path}: {exc}") from exc
    weights = full_model_state(state, path, files)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: {first}") from exc
    if class_texts is not None:
        model.set_class_texts(class_texts)
    model.to(device).eval()
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    temperature = float(state.get("temperature", 1.0))
    fold_model = FoldModel.prepare(model, fold, temperature)
    meta = {"class_names": list(state["class_names"]), "img_size": img_size,
            "config": config, "epoch": state.get("epoch"), "file": path.name, "temperature": temperature}
    return fold_model, meta
