"""``CLIPClassifier``: an image tower and a text tower projected into one embedding space.

Classes are represented by their descriptions: the class embedding is the mean of the
normalised embeddings of its descriptions, renormalised (DESIGN.md §3). Prediction is the
softmax over ``logit_scale · image @ classes.T``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.image_encoders import ImageEncoder, build_image_encoder
from models.text_encoders import build_text_encoder

MAX_LOGIT_SCALE = math.log(100.0)


class CLIPClassifier(nn.Module):
    def __init__(self, image_encoder: ImageEncoder, text_encoder: nn.Module, embed_dim: int,
                 temperature: float, class_texts: Sequence[Sequence[str]]) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_proj = nn.Linear(image_encoder.feature_dim, embed_dim)
        self.text_proj = nn.Linear(text_encoder.feature_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        # How often the text tower ran since the last reset (tests check the frozen-text cache).
        self.text_encoder_calls = 0
        self._frozen_text_features: torch.Tensor | None = None
        self.set_class_texts(class_texts)

    # -- classes -------------------------------------------------------------------------------
    def set_class_texts(self, class_texts: Sequence[Sequence[str]]) -> None:
        """Tokenize the descriptions once; ``class_texts[k]`` lists the descriptions of class k."""
        flat = [text for texts in class_texts for text in texts]
        owner = [k for k, texts in enumerate(class_texts) for _ in texts]
        self.class_texts = [list(texts) for texts in class_texts]
        self._tokens = self.text_encoder.tokenize(flat)
        self._owner = torch.tensor(owner, dtype=torch.long)
        self.reset_text_cache()

    def reset_text_cache(self) -> None:
        """Forget cached frozen-text features (new fold, or weights loaded from elsewhere)."""
        self._frozen_text_features = None
        self.text_encoder_calls = 0

    @property
    def n_classes(self) -> int:
        return len(self.class_texts)

    def text_tower_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.text_encoder.parameters())

    def _text_features(self, device: torch.device) -> torch.Tensor:
        tokens = {key: value.to(device) for key, value in self._tokens.items()}
        if not self.text_tower_frozen():
            self.text_encoder_calls += 1
            return self.text_encoder(**tokens)
        # A frozen tower gives the same features every step: compute them once.
        cached = self._frozen_text_features
        if cached is None or cached.device != device:
            with torch.no_grad():
                self.text_encoder_calls += 1
                cached = self.text_encoder(**tokens).float()
            self._frozen_text_features = cached
        return cached

    def encode_classes(self) -> torch.Tensor:
        """(C, embed_dim) L2-normalised class embeddings."""
        device = self.logit_scale.device
        features = self._text_features(device)
        per_text = F.normalize(self.text_proj(features.to(self.text_proj.weight.dtype)), dim=-1)
        # (C, T) one-hot ownership times (T, E): a deterministic sum per class (index_add is not
        # deterministic on CUDA).
        owner = F.one_hot(self._owner.to(device), self.n_classes).t().to(per_text.dtype)
        return F.normalize(owner @ per_text, dim=-1)

    # -- images --------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) L2-normalised image embeddings."""
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image embeddings, class embeddings and the logit scale (what the loss needs)."""
        return self.encode_images(images), self.encode_classes(), self.scale()

    @staticmethod
    def logits(image_emb: torch.Tensor, class_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return scale.float() * image_emb.float() @ class_emb.float().t()

    def train(self, mode: bool = True) -> "CLIPClassifier":
        super().train(mode)
        # A frozen tower stays in eval mode: its BatchNorm statistics and dropout must not move.
        for tower in (self.image_encoder, self.text_encoder):
            if not any(p.requires_grad for p in tower.parameters()):
                tower.eval()
        return self


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def build_clip_model(image_encoder: str, text_encoder: str, embed_dim: int, temperature: float,
                     class_texts: Sequence[Sequence[str]], freeze_image: bool = False,
                     freeze_text: bool = False, load_pretrained: bool = True, img_size: int | None = None,
                     image_weights: str | None = None, text_weights: str | None = None,
                     text_files: dict[str, torch.Tensor] | None = None) -> CLIPClassifier:
    """Build the classifier; ``load_pretrained=False`` when a checkpoint will supply every weight.

    ``img_size`` shapes encoders whose architecture depends on it (ViT); ``image_weights`` and
    ``text_weights`` are explicit weight paths that take precedence over the libraries' caches;
    ``text_files`` are a checkpoint's ``text_encoder_files`` (tokenizer and config).
    """
    model = CLIPClassifier(build_image_encoder(image_encoder, load_pretrained, img_size, image_weights),
                           build_text_encoder(text_encoder, load_pretrained, text_weights, text_files),
                           embed_dim, temperature, class_texts)
    if freeze_image:
        freeze(model.image_encoder)
    if freeze_text:
        freeze(model.text_encoder)
    return model


def model_kwargs_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The :func:`build_clip_model` arguments stored in a run's config (checkpoint or config.json).

    ``img_size`` fixes the ViT position embeddings; ``text_weights`` may be the folder that holds
    the tokenizer and architecture of a HuggingFace text encoder.
    """
    return {key: config[key] for key in ("image_encoder", "text_encoder", "embed_dim", "temperature",
                                         "freeze_image", "freeze_text", "img_size", "text_weights")}
