"""Chinese-CLIP (Yang et al. 2022, the Chinese-native CLIP) through transformers' ``ChineseCLIPModel``.

``cn-clip:ViT-B/16``, ``cn-clip:ViT-L/14``, ``cn-clip:ViT-L/14@336px``, ``cn-clip:ViT-H/14`` (the
OFA-Sys checkpoints on the HuggingFace hub), ``cn-clip:<hub name>`` or ``cn-clip:<folder>`` (a
``ChineseCLIPModel`` saved with ``save_pretrained``). The same name gives the text tower
(``--text-encoder``) and the image tower (``--image-encoder``).

The towers end in Chinese-CLIP's own projections, so both give CLIP embeddings: the text tower
projects the [CLS] state of its BERT (as ``ChineseCLIPModel.get_text_features``), the image tower
the post-LayerNorm [CLS] state of its ViT (as ``get_image_features``). Checkpoints carry the
configuration and tokenizer files (``saved_files``), so a run folder rebuilds them without the
HuggingFace cache. :data:`BUILDERS` is the family's entry in the table of :mod:`models.clip_builders`.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from models import hf_models
from models.clip_base import (IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, TEXT_FLAG, TEXT_WEIGHTS_FLAG, CLIPFamilyBuilders,
                              CLIPImage, CLIPImageBackbone, CLIPPair, Files)
from models.families import CHINESE_CLIP
from models.hf_files import context_length, tokenize
from models.hf_models import load_tokenizer, saved_files
from models.names import EncoderSource, UnknownEncoderError
from models.token_report import TokenReport, hf_token_report
from models.weights import hf_weights_location
from utils.errors import ConfigError

PREFIX = CHINESE_CLIP.prefix
ALIASES = {
    "ViT-B/16": "OFA-Sys/chinese-clip-vit-base-patch16",
    "ViT-L/14": "OFA-Sys/chinese-clip-vit-large-patch14",
    "ViT-L/14@336px": "OFA-Sys/chinese-clip-vit-large-patch14-336px",
    "ViT-H/14": "OFA-Sys/chinese-clip-vit-huge-patch14",
}
# Published by Chinese-CLIP, but only for its own cn_clip package: transformers' ChineseCLIPModel
# has a ViT image tower only, so these cannot be built here.
NOT_IN_TRANSFORMERS = ("RN50",)
# The image processor of every OFA-Sys checkpoint normalises with OpenAI CLIP's statistics.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
KIND = hf_models.HFModelKind(PREFIX, CHINESE_CLIP.title, "chinese_clip", "ChineseCLIPConfig", "ChineseCLIPModel")


def valid_names() -> list[str]:
    return [PREFIX + alias for alias in ALIASES] + [f"{PREFIX}<hub name or folder>"]


def resolve(model: str, flag: str, check_exists: bool = True) -> str:
    """The hub id or folder of ``cn-clip:<model>`` (loads nothing; see :func:`models.hf_models.resolve`)."""
    if model in NOT_IN_TRANSFORMERS:
        raise UnknownEncoderError(
            f"{flag} {PREFIX}{model}: Chinese-CLIP's {model} is published only for the cn_clip package; "
            f"transformers' ChineseCLIPModel builds ViT towers only, so use {PREFIX}ViT-B/16 (the smallest, "
            f"86M-parameter image tower) instead")
    return hf_models.resolve(KIND, model, flag, ALIASES, valid_names(), check_exists)


def load_config(target: str, name: str, flag: str, weights_flag: str, weights: str | None = None) -> Any:
    """The ``ChineseCLIPConfig`` of a hub model or folder (refused when it is another kind of model)."""
    return hf_models.load_config(KIND, target, name, flag, weights_flag, weights)


def load_pretrained_model(target: str, name: str, flag: str, weights_flag: str, weights: str | None = None) -> nn.Module:
    """The whole ``ChineseCLIPModel`` with its pretrained weights, loaded strictly."""
    return hf_models.load_pretrained_model(KIND, target, name, flag, weights_flag, weights)


def config_from_files(files: dict[str, torch.Tensor]) -> Any:
    """The ``ChineseCLIPConfig`` among a checkpoint's saved files."""
    return hf_models.config_from_files(KIND, files)


class ChineseCLIPTextEncoder(nn.Module):
    """Chinese-CLIP's BERT and its text projection: the CLIP text embedding of the [CLS] token."""

    def __init__(self, tokenizer: Any, clip_config: Any, text_model: nn.Module, projection: nn.Linear) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.clip_config = clip_config
        self.model = text_model
        self.projection = projection
        self.feature_dim = int(projection.out_features)
        self.context_length = context_length(tokenizer, int(clip_config.text_config.max_position_embeddings))

    @classmethod
    def from_clip(cls, clip: nn.Module, tokenizer: Any) -> "ChineseCLIPTextEncoder":
        return cls(tokenizer, clip.config, clip.text_model, clip.text_projection)

    @classmethod
    def from_config(cls, clip_config: Any, tokenizer: Any) -> "ChineseCLIPTextEncoder":
        """The architecture with random weights (no vision tower built)."""
        from transformers import ChineseCLIPTextModel

        text = ChineseCLIPTextModel(clip_config.text_config, add_pooling_layer=False)
        projection = nn.Linear(clip_config.text_config.hidden_size, clip_config.projection_dim, bias=False)
        return cls(tokenizer, clip_config, text, projection)

    @classmethod
    def from_saved_files(cls, files: dict[str, torch.Tensor]) -> "ChineseCLIPTextEncoder":
        return cls.from_config(config_from_files(files), hf_models.tokenizer_from_files(KIND, files))

    def saved_files(self) -> dict[str, torch.Tensor]:
        """Tokenizer files and the whole model's config.json (a pair rebuilds its image tower from it)."""
        return saved_files(self.tokenizer, self.clip_config)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.context_length)

    def token_report(self, text: str) -> TokenReport:
        """Token counts of ``text`` before truncation; [UNK] pieces count as unknown."""
        return hf_token_report(self.tokenizer, text)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(hidden[:, 0, :])


class ChineseCLIPImageTower(nn.Module):
    """Chinese-CLIP's ViT and its visual projection (expects CLIP-normalised pixels).

    Position embeddings are interpolated when the input is not the model's own size (transformers'
    ``interpolate_pos_encoding``; at the native size they are used as they are).
    """

    def __init__(self, vision_model: nn.Module, projection: nn.Linear) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection
        self.feature_dim = int(projection.out_features)
        self.patch_size = int(vision_model.config.patch_size)

    @classmethod
    def from_clip(cls, clip: nn.Module) -> "ChineseCLIPImageTower":
        return cls(clip.vision_model, clip.visual_projection)

    @classmethod
    def from_config(cls, clip_config: Any) -> "ChineseCLIPImageTower":
        from transformers import ChineseCLIPVisionModel

        vision = ChineseCLIPVisionModel(clip_config.vision_config)
        return cls(vision, nn.Linear(clip_config.vision_config.hidden_size, clip_config.projection_dim, bias=False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=images, interpolate_pos_encoding=True).pooler_output
        return self.projection(pooled)


def _resolve_source(model: str, pretrained: bool, flag: str, check_exists: bool) -> EncoderSource:
    return EncoderSource(CHINESE_CLIP.key, resolve(model, flag, check_exists), None, pretrained)


def build_text(source: EncoderSource, name: str, pretrained: bool, weights: str | None) -> ChineseCLIPTextEncoder:
    """The text tower alone (``pretrained`` False: architecture only, no vision tower ever built)."""
    args = (source.model, name, TEXT_FLAG, TEXT_WEIGHTS_FLAG, weights)
    tokenizer = load_tokenizer(*args)
    if not pretrained:
        return ChineseCLIPTextEncoder.from_config(load_config(*args), tokenizer)
    return ChineseCLIPTextEncoder.from_clip(load_pretrained_model(*args), tokenizer)


def _image(name: str, tower: ChineseCLIPImageTower, config: Any, img_size: int | None) -> CLIPImage:
    """The tower behind its renormalisation; any multiple of the patch size works (interpolated positions)."""
    if img_size is not None and img_size % tower.patch_size:
        raise ConfigError(f"--img-size {img_size}: {IMAGE_FLAG} {name} needs a multiple of its patch size "
                          f"{tower.patch_size} (e.g. {img_size - img_size % tower.patch_size or tower.patch_size})")
    return CLIPImage(CLIPImageBackbone(tower, IMAGE_MEAN, IMAGE_STD), tower.feature_dim, saved_files(config))


def build_image(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
                weights: str | None) -> CLIPImage:
    if pretrained:
        clip = load_pretrained_model(source.model, name, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, weights)
        return _image(name, ChineseCLIPImageTower.from_clip(clip), clip.config, img_size)
    config = load_config(source.model, name, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, weights)
    return _image(name, ChineseCLIPImageTower.from_config(config), config, img_size)


def image_from_files(files: Files, name: str, img_size: int | None) -> CLIPImage:
    config = config_from_files(files)
    return _image(name, ChineseCLIPImageTower.from_config(config), config, img_size)


def build_pair(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
               weights: str | None) -> CLIPPair:
    args = (source.model, name, TEXT_FLAG, TEXT_WEIGHTS_FLAG, weights)
    tokenizer = load_tokenizer(*args)
    if pretrained:
        clip = load_pretrained_model(*args)
    else:
        from transformers import ChineseCLIPModel

        clip = ChineseCLIPModel(load_config(*args))
    text = ChineseCLIPTextEncoder.from_clip(clip, tokenizer)
    image = _image(name, ChineseCLIPImageTower.from_clip(clip), clip.config, img_size)
    return CLIPPair(image, text, float(clip.logit_scale.detach()))


def pair_from_files(files: Files, name: str, img_size: int | None) -> CLIPPair:
    """A restore: the text tower's files hold the whole model's config; the checkpoint's state gives the scale."""
    text = ChineseCLIPTextEncoder.from_saved_files(files)
    config = text.clip_config
    image = _image(name, ChineseCLIPImageTower.from_config(config), config, img_size)
    return CLIPPair(image, text, float(config.logit_scale_init_value))


BUILDERS = CLIPFamilyBuilders(
    CHINESE_CLIP, resolve=_resolve_source, image=build_image, image_from_files=image_from_files,
    pair=build_pair, pair_from_files=pair_from_files, text=build_text,
    text_from_files=ChineseCLIPTextEncoder.from_saved_files, weights_location=hf_weights_location,
    counts=partial(hf_models.counts, KIND), weights_folder=True)
