"""Scoring images with fold models, alone or as an ensemble: one implementation for the trainer's
validation and held-out test set and for predict.py, so the numbers agree exactly.

An image's probabilities are ``softmax(scale · image_emb @ class_emb.T)``; the class embeddings
and the scale are computed once per model, outside autocast. An ensemble averages the fold
models' probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models.clip_model import CLIPClassifier
from utils.device import autocast, to_device


@dataclass
class FoldModel:
    """One fold's classifier with its class embeddings and logit scale computed once."""

    fold: int
    model: CLIPClassifier
    class_emb: torch.Tensor
    scale: torch.Tensor

    @classmethod
    @torch.no_grad()
    def prepare(cls, model: CLIPClassifier, fold: int = 0) -> FoldModel:
        model.eval()
        return cls(fold, model, model.encode_classes(), model.scale())


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
    """Mean over ``models`` of each one's class probabilities for a batch."""
    total = sum(image_logits(m, images, device, amp_dtype).softmax(dim=1) for m in models)
    return (total / len(models)).cpu().numpy()
