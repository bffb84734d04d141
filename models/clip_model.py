"""``CLIPClassifier``: an image tower and a text tower projected into one embedding space.

Classes are represented by their descriptions: the class embedding is the mean of the
normalised embeddings of its descriptions, renormalised (docs/design.md §3). Prediction is the
softmax over ``logit_scale · image @ classes.T``.

When both towers are one CLIP model (:mod:`models.clip_towers`), the towers already end in that
CLIP's own projections: the classifier adds none (identity) and starts from CLIP's logit scale
(and, for SigLIP, keeps its logit bias and leaves its scale uncapped: docs/design.md §3).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_towers import build_clip_pair, describe_projections, paired_source
from models.image_encoders import ImageEncoder, build_image_encoder
from models.names import split_suffix
from models.text_encoders import build_text_encoder
from utils.logging_setup import get_logger

log = get_logger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)


class CLIPClassifier(nn.Module):
    def __init__(self, image_encoder: ImageEncoder, text_encoder: nn.Module, embed_dim: int,
                 temperature: float, class_texts: Sequence[Sequence[str]],
                 clip_logit_scale: float | None = None, clip_logit_bias: float | None = None,
                 cap_logit_scale: bool = True) -> None:
        """``clip_logit_scale`` (a log, as CLIP stores it) marks paired CLIP towers: their embeddings
        are already shared, so no projections are added and ``embed_dim``/``temperature`` are unused.
        ``clip_logit_bias`` is SigLIP's; ``cap_logit_scale`` False leaves the scale uncapped (SigLIP's
        learned scale may exceed CLIP's cap of 100, and its zero-shot probabilities need it as it is)."""
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.paired = clip_logit_scale is not None
        if self.paired:
            if image_encoder.feature_dim != text_encoder.feature_dim:
                raise ValueError(f"paired towers disagree: {image_encoder.feature_dim} != {text_encoder.feature_dim}")
            self.image_proj: nn.Module = nn.Identity()
            self.text_proj: nn.Module = nn.Identity()
            initial_scale = float(clip_logit_scale)
        else:
            self.image_proj = nn.Linear(image_encoder.feature_dim, embed_dim)
            self.text_proj = nn.Linear(text_encoder.feature_dim, embed_dim)
            initial_scale = math.log(1.0 / temperature)
        self.logit_scale = nn.Parameter(torch.tensor(initial_scale))
        self.max_logit_scale = MAX_LOGIT_SCALE if cap_logit_scale else None
        if clip_logit_bias is not None:
            # SigLIP's bias: scale · cos + bias are SigLIP's own logits (its sigmoid scores). The same for
            # every class, it changes no softmax probability and gets no gradient from the class loss;
            # a buffer, so checkpoints keep it beside the scale.
            self.register_buffer("logit_bias", torch.tensor(float(clip_logit_bias)))
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
        per_text = F.normalize(self.text_proj(features.to(self.logit_scale.dtype)), dim=-1)
        # (C, T) one-hot ownership times (T, E): a deterministic sum per class (index_add is not
        # deterministic on CUDA).
        owner = F.one_hot(self._owner.to(device), self.n_classes).t().to(per_text.dtype)
        return F.normalize(owner @ per_text, dim=-1)

    # -- images --------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) L2-normalised image embeddings."""
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)

    def scale(self) -> torch.Tensor:
        capped = self.logit_scale if self.max_logit_scale is None else self.logit_scale.clamp(max=self.max_logit_scale)
        return capped.exp()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image embeddings, class embeddings and the logit scale (what the loss needs)."""
        return self.encode_images(images), self.encode_classes(), self.scale()

    @staticmethod
    def logits(image_emb: torch.Tensor, class_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return scale.float() * image_emb.float() @ class_emb.float().t()

    def compile_towers(self, mode: str | None = None) -> None:
        """torch.compile, in place (Module.compile: the state-dict keys stay those of the plain
        towers, so checkpoints load with or without --compile): the image tower, and the text tower
        when it trains. A trainable text tower runs every step on the same few short sequences: eager,
        launching its hundreds of small kernels (and autocast's weight casts) costs the CPU more than
        the GPU's work; a frozen one runs once per fold and is not worth compiling. ``mode`` is
        torch.compile's (None: its default; ``reduce-overhead``: CUDA graphs)."""
        self.image_encoder.compile(mode=mode)
        if not self.text_tower_frozen():
            self.text_encoder.compile(mode=mode)

    def train(self, mode: bool = True) -> "CLIPClassifier":
        super().train(mode)
        # A frozen tower stays in eval mode: its BatchNorm statistics and dropout must not move.
        for tower in (self.image_encoder, self.text_encoder):
            if not any(p.requires_grad for p in tower.parameters()):
                tower.eval()
        # So does a BatchNorm frozen inside a training tower (--unlocked-groups, LP-FT's first phase).
        for module in self.modules():
            weights = list(module.parameters()) if isinstance(module, nn.modules.batchnorm._BatchNorm) else []
            if weights and not any(p.requires_grad for p in weights):
                module.eval()
        return self


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def build_clip_model(image_encoder: str, text_encoder: str, embed_dim: int, temperature: float,
                     class_texts: Sequence[Sequence[str]], freeze_image: bool = False,
                     freeze_text: bool = False, load_pretrained: bool = True, img_size: int | None = None,
                     image_weights: str | None = None, text_weights: str | None = None,
                     text_files: dict[str, torch.Tensor] | None = None,
                     image_files: dict[str, torch.Tensor] | None = None) -> CLIPClassifier:
    """Build the classifier; ``load_pretrained=False`` when a checkpoint will supply every weight.

    ``img_size`` shapes encoders whose architecture depends on it (ViT); ``image_weights`` and
    ``text_weights`` are explicit weight paths that take precedence over the libraries' caches;
    ``text_files`` and ``image_files`` are a checkpoint's ``text_encoder_files`` (tokenizer and
    config) and ``image_encoder_files``. Towers of one CLIP model are loaded once, as a pair.
    """
    pair = paired_source(image_encoder, text_encoder, image_weights, text_weights, check_exists=load_pretrained)
    if pair is not None:
        towers = build_clip_pair(pair, text_encoder, load_pretrained, img_size, text_weights, text_files)
        image = ImageEncoder(split_suffix(image_encoder).base, towers.image.backbone, towers.image.feature_dim,
                             towers.image.files)
        model = CLIPClassifier(image, towers.text, embed_dim, temperature, class_texts, towers.logit_scale,
                               towers.logit_bias, towers.capped)
        if load_pretrained and embed_dim != image.feature_dim:
            log.info("--embed-dim %d is not used: the paired towers keep their CLIP's own %d-d embedding",
                     embed_dim, image.feature_dim)
    else:
        model = CLIPClassifier(build_image_encoder(image_encoder, load_pretrained, img_size, image_weights, image_files),
                               build_text_encoder(text_encoder, load_pretrained, text_weights, text_files),
                               embed_dim, temperature, class_texts)
    if load_pretrained:
        log.info(describe_projections(image_encoder, text_encoder, model.paired, _new_projection(model.image_proj),
                                      _new_projection(model.text_proj), hasattr(model, "logit_bias")))
    if freeze_image:
        freeze(model.image_encoder)
    if freeze_text:
        freeze(model.text_encoder)
    return model


def _new_projection(layer: nn.Module) -> tuple[int, int] | None:
    return (layer.in_features, layer.out_features) if isinstance(layer, nn.Linear) else None


def model_kwargs_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The :func:`build_clip_model` arguments stored in a run's config (checkpoint or config.json).

    ``img_size`` fixes the ViT position embeddings; ``text_weights`` may be the folder that holds
    the tokenizer and architecture of a HuggingFace text encoder; the two weights paths together
    say whether CLIP towers were paired.
    """
    return {key: config[key] for key in ("image_encoder", "text_encoder", "embed_dim", "temperature",
                                         "freeze_image", "freeze_text", "img_size", "image_weights", "text_weights")}
