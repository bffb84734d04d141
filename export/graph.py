"""The exported model: images in, class probabilities out, text tower baked in.

A run's classes are fixed sentences, so each fold's class embeddings are computed once here (as
predict.py does, :class:`training.ensemble.FoldModel`) and stored in the graph as a constant
matrix: the text tower and its tokenizer are not needed to classify an image.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_model import CLIPClassifier
from training.ensemble import FoldModel


class FoldHead(nn.Module):
    """One fold: image encoder → projection → L2 normalisation → cosine with the normalised class
    embeddings × logit scale, divided by the fold's fitted temperature → softmax."""

    def __init__(self, fold_model: FoldModel) -> None:
        super().__init__()
        model = fold_model.model
        self.image_encoder = model.image_encoder
        self.image_proj = model.image_proj
        self.register_buffer("class_emb", fold_model.class_emb.detach().float().clone())
        self.register_buffer("scale", fold_model.scale.detach().float().clone())
        self.register_buffer("temperature", torch.tensor(float(fold_model.temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_emb = F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)  # CLIPClassifier.encode_images
        logits = CLIPClassifier.logits(image_emb, self.class_emb, self.scale)
        # predict.py applies the temperature to the probabilities (reporting/calibration.py:
        # softmax(log p / T)); log p is the logits less a per-image constant the softmax removes.
        return (logits / self.temperature).softmax(dim=1)


class ExportedClassifier(nn.Module):
    """The mean of the fold heads' probabilities (predict.py's ensemble, training.ensemble.ensemble_probs);
    one fold is an ensemble of one."""

    def __init__(self, fold_models: Sequence[FoldModel]) -> None:
        super().__init__()
        if not fold_models:
            raise ValueError("no fold models to export")
        self.folds = nn.ModuleList([FoldHead(m) for m in fold_models])
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = [head(images) for head in self.folds]
        return torch.stack(probs).mean(dim=0) if len(probs) > 1 else probs[0]
