"""SigLIP (Zhai et al. 2023, sigmoid-loss language-image pre-training) through transformers' ``SiglipModel``.

``siglip:MedSigLIP-448`` (Google's medical SigLIP, 448 px), ``siglip:ViT-B/16`` (google/siglip-base-
patch16-224), ``siglip:<hub name>`` or ``siglip:<folder>`` (a ``SiglipModel`` saved with
``save_pretrained``, with its tokenizer and ``preprocessor_config.json``). The same name gives the
text tower (``--text-encoder``) and the image tower (``--image-encoder``).

Both towers end in SigLIP's own heads, so they give SigLIP's embeddings exactly as transformers'
``get_text_features`` / ``get_image_features`` do: the text tower projects the hidden state of the
*last* position (SigLIP pools there, whatever token sits there, and was trained on texts padded to
its context: tokens are padded to ``max_length`` and no attention mask is passed, as transformers'
docs say to); the image tower pools the patch tokens with its attention-pooling (MAP) head. The
heads are held as each tower's ``projection``, as Chinese-CLIP's are (LP-FT's head in
training/finetune.py). The input size and normalisation are the processor config's; checkpoints
carry the config, tokenizer and processor files, so a run folder rebuilds the towers offline.
:data:`BUILDERS` is the family's entry in the table of :mod:`models.clip_builders`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from models import hf_models
from models.clip_base import (IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, TEXT_FLAG, TEXT_WEIGHTS_FLAG, CLIPFamilyBuilders,
                              CLIPImage, CLIPImageBackbone, CLIPPair, Files, check_size)
from models.families import SIGLIP
from models.hf_files import context_length
from models.hf_models import config_from_files, saved_files, tokenizer_from_files
from models.names import EncoderSource, WeightsNotFoundError
from models.token_report import TokenReport, hf_token_report
from models.weights import first_line, hf_from_pretrained, hf_weights_location

PREFIX = SIGLIP.prefix
ALIASES = {
    "MedSigLIP-448": "google/medsiglip-448",
    "ViT-B/16": "google/siglip-base-patch16-224",
}
KIND = hf_models.HFModelKind(PREFIX, SIGLIP.title, "siglip", "SiglipConfig", "SiglipModel")
PROCESSOR_FILE = "preprocessor_config.json"


def valid_names() -> list[str]:
    return [PREFIX + alias for alias in ALIASES] + [f"{PREFIX}<hub name or folder>"]


def resolve(model: str, flag: str, check_exists: bool = True) -> str:
    """The hub id or folder of ``siglip:<model>`` (loads nothing; see :func:`models.hf_models.resolve`)."""
    return hf_models.resolve(KIND, model, flag, ALIASES, valid_names(), check_exists)


@dataclass(frozen=True)
class ImageInput:
    """What SigLIP's image processor gives the model: a square of ``size`` pixels, normalised so."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, processor: Any) -> "ImageInput":
        settings = processor.to_dict()
        size = settings["size"]
        return cls(int(size["height"]), tuple(settings["image_mean"]), tuple(settings["image_std"]))


def load_processor(target: str, name: str, flag: str, weights_flag: str, weights: str | None = None) -> Any:
    """The model's image processor (its ``preprocessor_config.json``): the input size and normalisation."""
    from transformers import SiglipImageProcessor

    return hf_from_pretrained(SiglipImageProcessor, weights or target, flag, name, weights_flag)


def load_tokenizer(target: str, name: str, flag: str, weights_flag: str, weights: str | None = None) -> Any:
    try:
        return hf_models.load_tokenizer(target, name, flag, weights_flag, weights)
    except ImportError as exc:  # Google's SigLIP tokenizers are SentencePiece models
        reason = first_line(exc).split(". ")[0]  # transformers' first sentence names the missing library
        raise WeightsNotFoundError(f"{flag} {name}: its tokenizer cannot be loaded ({reason}); install the "
                                   f"package it names (pip install sentencepiece for Google's SigLIP models)") from exc


def processor_from_files(files: dict[str, torch.Tensor]) -> Any:
    from transformers import SiglipImageProcessor

    return hf_models.from_files(KIND, files, SiglipImageProcessor, PROCESSOR_FILE)


def _text_parts(text_model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """SigLIP's text transformer with its head taken out (the head becomes the tower's projection)."""
    head = text_model.head
    text_model.head = nn.Identity()  # pooler_output: the last position's hidden state itself
    return text_model, head


def _vision_parts(vision_model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """SigLIP's vision transformer with its attention-pooling head taken out."""
    head = vision_model.head
    del vision_model.head
    vision_model.use_head = False
    return vision_model, head


class SiglipTextEncoder(nn.Module):
    """SigLIP's text transformer and its head: the embedding of the last position."""

    def __init__(self, tokenizer: Any, config: Any, processor: Any, text_model: nn.Module,
                 projection: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.clip_config = config
        self.processor = processor  # kept for the checkpoint: a pair rebuilds its image tower from it
        self.model = text_model
        self.projection = projection
        self.feature_dim = int(projection.out_features)
        self.context_length = context_length(tokenizer, int(config.text_config.max_position_embeddings))

    @classmethod
    def from_siglip(cls, siglip: nn.Module, tokenizer: Any, processor: Any) -> "SiglipTextEncoder":
        return cls(tokenizer, siglip.config, processor, *_text_parts(siglip.text_model))

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any, processor: Any) -> "SiglipTextEncoder":
        """The architecture with random weights (no vision tower built)."""
        from transformers import SiglipTextModel

        return cls(tokenizer, config, processor, *_text_parts(SiglipTextModel(config.text_config)))

    @classmethod
    def from_saved_files(cls, files: dict[str, torch.Tensor]) -> "SiglipTextEncoder":
        return cls.from_config(config_from_files(KIND, files), tokenizer_from_files(KIND, files),
                               processor_from_files(files))

    def saved_files(self) -> dict[str, torch.Tensor]:
        """Tokenizer files, the whole model's config.json and the processor config."""
        return saved_files(self.tokenizer, self.clip_config, self.processor)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids padded to the context, as SigLIP was trained (its pooled position is the last one)."""
        batch = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"]}

    def token_report(self, text: str) -> TokenReport:
        return hf_token_report(self.tokenizer, text)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.model(input_ids=input_ids).pooler_output)


class SiglipImageTower(nn.Module):
    """SigLIP's ViT and its attention-pooling head (expects pixels normalised as its processor does)."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection
        self.feature_dim = int(vision_model.config.hidden_size)
        self.image_size = int(vision_model.config.image_size)

    @classmethod
    def from_siglip(cls, siglip: nn.Module) -> "SiglipImageTower":
        return cls(*_vision_parts(siglip.vision_model))

    @classmethod
    def from_config(cls, config: Any) -> "SiglipImageTower":
        from transformers import SiglipVisionModel

        return cls(*_vision_parts(SiglipVisionModel(config.vision_config)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.vision_model(pixel_values=images).last_hidden_state)


@dataclass
class LoadedSiglip:
    """A whole SigLIP model's parts: the pair builds both towers from one, a single tower half of it."""

    model: nn.Module | None  # None when only the architecture was asked for and the towers are built alone
    config: Any
    tokenizer: Any
    processor: Any


def load(target: str, name: str, flag: str, weights_flag: str, pretrained: bool, weights: str | None = None,
         with_tokenizer: bool = True) -> LoadedSiglip:
    """The config, processor and (``with_tokenizer``) tokenizer, and with ``pretrained`` the whole model
    loaded strictly."""
    args = (target, name, flag, weights_flag, weights)
    processor = load_processor(*args)
    tokenizer = load_tokenizer(*args) if with_tokenizer else None
    if pretrained:
        model = hf_models.load_pretrained_model(KIND, *args)
        return LoadedSiglip(model, model.config, tokenizer, processor)
    return LoadedSiglip(None, hf_models.load_config(KIND, *args), tokenizer, processor)


def _resolve_source(model: str, pretrained: bool, flag: str, check_exists: bool) -> EncoderSource:
    return EncoderSource(SIGLIP.key, resolve(model, flag, check_exists), None, pretrained)


def build_text(source: EncoderSource, name: str, pretrained: bool, weights: str | None) -> SiglipTextEncoder:
    """The text tower alone (``pretrained`` False: architecture only, no vision tower ever built)."""
    loaded = load(source.model, name, TEXT_FLAG, TEXT_WEIGHTS_FLAG, pretrained, weights)
    if loaded.model is None:
        return SiglipTextEncoder.from_config(loaded.config, loaded.tokenizer, loaded.processor)
    return SiglipTextEncoder.from_siglip(loaded.model, loaded.tokenizer, loaded.processor)


def _image(name: str, tower: SiglipImageTower, config: Any, processor: Any, img_size: int | None) -> CLIPImage:
    """The processor config's size and normalisation: SigLIP's own input (its zero-shot is at that size)."""
    expected = ImageInput.of(processor)
    check_size(name, expected.size, img_size, f"its {PROCESSOR_FILE}")
    backbone = CLIPImageBackbone(tower, expected.mean, expected.std)
    return CLIPImage(backbone, tower.feature_dim, saved_files(config, processor))


def build_image(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
                weights: str | None) -> CLIPImage:
    loaded = load(source.model, name, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, pretrained, weights, with_tokenizer=False)
    tower = (SiglipImageTower.from_siglip(loaded.model) if loaded.model is not None
             else SiglipImageTower.from_config(loaded.config))
    return _image(name, tower, loaded.config, loaded.processor, img_size)


def image_from_files(files: Files, name: str, img_size: int | None) -> CLIPImage:
    """A restore: the checkpoint's config and processor."""
    config, processor = config_from_files(KIND, files), processor_from_files(files)
    return _image(name, SiglipImageTower.from_config(config), config, processor, img_size)


# SigLIP's initialisation (Zhai et al. 2023, §3.3): transformers zero-initialises both, expecting weights.
INITIAL_SCALE, INITIAL_BIAS = math.log(10.0), -10.0


def build_pair(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
               weights: str | None) -> CLIPPair:
    loaded = load(source.model, name, TEXT_FLAG, TEXT_WEIGHTS_FLAG, pretrained, weights)
    if loaded.model is None:
        from transformers import SiglipModel

        model, scale, bias = SiglipModel(loaded.config), INITIAL_SCALE, INITIAL_BIAS
    else:
        model = loaded.model
        scale, bias = float(model.logit_scale.detach()), float(model.logit_bias.detach())
    text = SiglipTextEncoder.from_siglip(model, loaded.tokenizer, loaded.processor)
    image = _image(name, SiglipImageTower.from_siglip(model), text.clip_config, text.processor, img_size)
    return CLIPPair(image, text, scale, bias, capped=False)


def pair_from_files(files: Files, name: str, img_size: int | None) -> CLIPPair:
    """A restore: the checkpoint's files, and its state gives the scale and bias."""
    text = SiglipTextEncoder.from_saved_files(files)
    image = _image(name, SiglipImageTower.from_config(text.clip_config), text.clip_config, text.processor, img_size)
    return CLIPPair(image, text, INITIAL_SCALE, INITIAL_BIAS, capped=False)


BUILDERS = CLIPFamilyBuilders(
    SIGLIP, resolve=_resolve_source, image=build_image, image_from_files=image_from_files,
    pair=build_pair, pair_from_files=pair_from_files, text=build_text,
    text_from_files=SiglipTextEncoder.from_saved_files, weights_location=hf_weights_location,
    counts=partial(hf_models.counts, KIND), weights_folder=True)
