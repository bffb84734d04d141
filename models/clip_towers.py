"""CLIP image towers (``--image-encoder clip:...`` / ``cn-clip:...`` / ``siglip:...``) and paired towers.

A CLIP image tower is the vision half of an open_clip model (``clip:ViT-B/32``, any
``clip:<open_clip model>``, ``clip:hf-hub:<repo>`` such as BiomedCLIP), of a Chinese-CLIP model
(``cn-clip:ViT-B/16``, ...) or of a SigLIP model (``siglip:MedSigLIP-448``, ...): the same names as
the text side, resolved by the same code. Like the text side, these names load their pretrained
weights unless ``:scratch`` is added.

Every CLIP tower ends in its model's own projection, so it gives the CLIP embedding. Two towers
are a **pair** when both names give the same model with the same weights (the same name, both
pretrained or both ``:scratch``, and the same ``--image-weights``/``--text-weights``). A pair is
loaded once and the classifier keeps that CLIP's projections and logit scale (no new layers): epoch
0 is that CLIP's own zero-shot accuracy and fine-tuning starts from it. A SigLIP pair also keeps
SigLIP's logit bias, and its logit scale is not capped at CLIP's 100 (SigLIP has no cap; design §3).
A tower that is not in a pair gets a new projection from its CLIP embedding into ``--embed-dim``,
as any other encoder does.

The trainer's images are normalised with ImageNet's statistics (data/transforms.py); a CLIP image
tower first converts them to its model's own normalisation, an exact per-channel affine map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import chinese_clip, siglip
from models.families import CHINESE_CLIP, IMAGE, OPEN_CLIP, SIGLIP, TRANSFORMERS_CLIP_FAMILIES, family_of, is_clip_name
from models.hf_models import config_from_files, saved_files
from models.names import EncoderSource, split_suffix
from models.open_clip_towers import OpenCLIPTextEncoder, load_open_clip, resolve_open_clip
from utils.errors import ConfigError
from utils.logging_setup import get_logger

log = get_logger(__name__)

IMAGE_FLAG, IMAGE_WEIGHTS_FLAG = "--image-encoder", "--image-weights"
TEXT_FLAG, TEXT_WEIGHTS_FLAG = "--text-encoder", "--text-weights"
# The statistics data/transforms.py normalises every model input with (models may not import data;
# tests/models/test_clip_towers.py checks that the two agree).
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)


def resolve_clip_source(base: str, pretrained: bool, flag: str = TEXT_FLAG,
                        check_exists: bool = True) -> EncoderSource:
    """``clip:<model>``, ``cn-clip:<model>`` or ``siglip:<model>`` (no suffix) for either tower; ``flag`` is
    the one errors name (``check_exists`` False: a restore, the model's folder may be gone)."""
    family = family_of(base, IMAGE)
    if family in TRANSFORMERS_CLIP_FAMILIES:
        resolve = chinese_clip.resolve if family is CHINESE_CLIP else siglip.resolve
        return EncoderSource(family.key, resolve(family.model(base), flag, check_exists), None, pretrained)
    return resolve_open_clip(OPEN_CLIP.model(base), pretrained, flag)


def resolve_clip_image(name: str, weights: str | None = None, check_exists: bool = True) -> EncoderSource:
    """Where the CLIP image tower ``name`` comes from (pretrained unless ``:scratch``; loads nothing)."""
    parsed = split_suffix(name)
    if weights is not None and parsed.pretrained is False:
        raise ConfigError(f"{IMAGE_FLAG} {name} asks for random weights but {IMAGE_WEIGHTS_FLAG} {weights} is "
                          f"given; drop one of them")
    source = resolve_clip_source(parsed.base, parsed.pretrained is not False, IMAGE_FLAG, check_exists)
    family = family_of(parsed.base, IMAGE)
    if weights is not None and family in TRANSFORMERS_CLIP_FAMILIES and Path(weights).is_file():
        raise ConfigError(f"{IMAGE_WEIGHTS_FLAG} {weights}: {parsed.base} needs a {family.title} model folder "
                          f"(config.json and weights, as save_pretrained writes), not a file")
    return source


class Renormalise(nn.Module):
    """ImageNet-normalised pixels → the normalisation a CLIP model was trained with (no parameters)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # Kept in float64 and cast to the input's dtype in forward: a float64 model (the equivalence
        # tests') applies the exact map, a float32 or bfloat16 one its rounding.
        def vector(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64)

        scale = vector(INPUT_STD) / vector(std)
        shift = (vector(INPUT_MEAN) - vector(mean)) / vector(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale.to(images.dtype) + self.shift.to(images.dtype)


class CLIPImageBackbone(nn.Module):
    """A CLIP vision tower (ending in its projection) behind :class:`Renormalise`."""

    def __init__(self, tower: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.renormalise = Renormalise(mean, std)
        self.tower = tower

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower(self.renormalise(images))


@dataclass
class CLIPImage:
    """A built CLIP image tower: the backbone, its embedding size and the files a checkpoint keeps."""

    backbone: CLIPImageBackbone
    feature_dim: int
    files: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class CLIPPair:
    """Both towers of one CLIP model, its logit scale (a log, as CLIP stores it) and, for SigLIP, its logit
    bias and no cap on the scale."""

    image: CLIPImage
    text: nn.Module
    logit_scale: float
    logit_bias: float | None = None
    capped: bool = True


def _open_clip_statistics(source: EncoderSource, visual: nn.Module) -> tuple[tuple, tuple]:
    """The mean/std the weights were trained with: the pretrained tag's, else the model config's."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(source.model, source.tag) if source.tag else {}
    mean = tag_cfg.get("mean") or visual.image_mean or open_clip.OPENAI_DATASET_MEAN
    std = tag_cfg.get("std") or visual.image_std or open_clip.OPENAI_DATASET_STD
    return tuple(mean), tuple(std)


def _check_size(name: str, size: int | None, img_size: int | None, why: str) -> None:
    if img_size is not None and size is not None and int(size) != img_size:
        raise ConfigError(f"--img-size {img_size}: {IMAGE_FLAG} {name} was built for {size}-pixel images ({why}); "
                          f"use --img-size {size}")


def _check_open_clip_size(name: str, visual: nn.Module, img_size: int | None) -> None:
    size = getattr(visual, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    _check_size(name, size, img_size, "its position embeddings are fixed")


def _check_patch_multiple(name: str, tower: chinese_clip.ChineseCLIPImageTower, img_size: int | None) -> None:
    if img_size is not None and img_size % tower.patch_size:
        raise ConfigError(f"--img-size {img_size}: {IMAGE_FLAG} {name} needs a multiple of its patch size "
                          f"{tower.patch_size} (e.g. {img_size - img_size % tower.patch_size or tower.patch_size})")


def _open_clip_image(source: EncoderSource, name: str, visual: nn.Module, embed_dim: int,
                     img_size: int | None) -> CLIPImage:
    _check_open_clip_size(name, visual, img_size)
    mean, std = _open_clip_statistics(source, visual)
    return CLIPImage(CLIPImageBackbone(visual, mean, std), embed_dim)


def _chinese_clip_image(name: str, tower: chinese_clip.ChineseCLIPImageTower, config: Any,
                        img_size: int | None) -> CLIPImage:
    _check_patch_multiple(name, tower, img_size)
    backbone = CLIPImageBackbone(tower, chinese_clip.IMAGE_MEAN, chinese_clip.IMAGE_STD)
    return CLIPImage(backbone, tower.feature_dim, saved_files(config))


def _siglip_image(name: str, tower: siglip.SiglipImageTower, config: Any, processor: Any,
                  img_size: int | None) -> CLIPImage:
    """The processor config's size and normalisation: SigLIP's own input (its zero-shot is at that size)."""
    expected = siglip.ImageInput.of(processor)
    _check_size(name, expected.size, img_size, f"its {siglip.PROCESSOR_FILE}")
    backbone = CLIPImageBackbone(tower, expected.mean, expected.std)
    return CLIPImage(backbone, tower.feature_dim, saved_files(config, processor))


def _build_siglip_image(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
                        weights: str | None, files: dict[str, torch.Tensor] | None) -> CLIPImage:
    if files and not pretrained:  # a restore: the checkpoint's config and processor
        config, processor = config_from_files(siglip.KIND, files), siglip.processor_from_files(files)
        return _siglip_image(name, siglip.SiglipImageTower.from_config(config), config, processor, img_size)
    loaded = siglip.load(source.model, name, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, pretrained, weights, with_tokenizer=False)
    tower = (siglip.SiglipImageTower.from_siglip(loaded.model) if loaded.model is not None
             else siglip.SiglipImageTower.from_config(loaded.config))
    return _siglip_image(name, tower, loaded.config, loaded.processor, img_size)


def _open_clip_embed_dim(config_name: str) -> int:
    import open_clip

    return int(open_clip.get_model_config(config_name)["embed_dim"])


def build_clip_image(name: str, load_pretrained: bool = True, img_size: int | None = None,
                     weights: str | None = None, files: dict[str, torch.Tensor] | None = None) -> CLIPImage:
    """The image tower of the CLIP model ``name`` alone (the text tower is not kept).

    ``files`` are a checkpoint's ``image_encoder_files`` (a Chinese-CLIP config, a SigLIP config and
    processor config): with them, and ``load_pretrained`` False, nothing else is read.
    """
    source = resolve_clip_image(name, weights, check_exists=load_pretrained)
    pretrained = source.pretrained and load_pretrained
    if source.kind == SIGLIP.key:
        return _build_siglip_image(source, name, pretrained, img_size, weights, files if not load_pretrained else None)
    if source.kind == OPEN_CLIP.key:
        loaded = load_open_clip(source, name, pretrained, weights, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG)
        return _open_clip_image(source, name, loaded.model.visual, _open_clip_embed_dim(loaded.config_name),
                                img_size)
    if files and not load_pretrained:
        config = chinese_clip.config_from_files(files)
        return _chinese_clip_image(name, chinese_clip.ChineseCLIPImageTower.from_config(config), config, img_size)
    if pretrained:
        clip = chinese_clip.load_pretrained_model(source.model, name, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, weights)
        return _chinese_clip_image(name, chinese_clip.ChineseCLIPImageTower.from_clip(clip), clip.config, img_size)
    config = chinese_clip.load_config(source.model, name, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, weights)
    return _chinese_clip_image(name, chinese_clip.ChineseCLIPImageTower.from_config(config), config, img_size)


def paired_source(image_name: str, text_name: str, image_weights: str | None, text_weights: str | None,
                  check_exists: bool = True) -> EncoderSource | None:
    """The CLIP model both towers come from, or None when they are not one model with one set of weights."""
    if not (is_clip_name(image_name) and is_clip_name(text_name)):
        return None
    image = resolve_clip_image(image_name, image_weights, check_exists)
    parsed = split_suffix(text_name)
    text = resolve_clip_source(parsed.base, parsed.pretrained is not False, TEXT_FLAG, check_exists)
    if image != text:
        return None
    if image_weights != text_weights:
        log.info("%s %s and %s %s are one model but %s and %s differ: the towers are not paired (each gets "
                 "a new projection)", IMAGE_FLAG, image_name, TEXT_FLAG, text_name, IMAGE_WEIGHTS_FLAG,
                 TEXT_WEIGHTS_FLAG)
        return None
    return image


def build_clip_pair(source: EncoderSource, name: str, load_pretrained: bool = True,
                    img_size: int | None = None, weights: str | None = None,
                    text_files: dict[str, torch.Tensor] | None = None) -> CLIPPair:
    """Both towers of one CLIP model, loaded once (one copy of the weights in memory).

    ``name`` is the text side's name (the pair's weights are resolved there); ``text_files`` are a
    checkpoint's ``text_encoder_files`` (a Chinese-CLIP or SigLIP tokenizer and config).
    """
    pretrained = source.pretrained and load_pretrained
    if source.kind == SIGLIP.key:
        return _siglip_pair(source, name, pretrained, img_size, weights, text_files if not load_pretrained else None)
    if source.kind == OPEN_CLIP.key:
        loaded = load_open_clip(source, name, pretrained, weights, TEXT_FLAG, TEXT_WEIGHTS_FLAG)
        scale = float(loaded.model.logit_scale.detach())
        embed_dim = _open_clip_embed_dim(loaded.config_name)
        image = _open_clip_image(source, name, loaded.model.visual, embed_dim, img_size)
        return CLIPPair(image, OpenCLIPTextEncoder(loaded), scale)  # the text encoder drops .visual
    if text_files and not load_pretrained:
        text = chinese_clip.ChineseCLIPTextEncoder.from_saved_files(text_files)
        config = text.clip_config
        tower = chinese_clip.ChineseCLIPImageTower.from_config(config)
        scale = float(config.logit_scale_init_value)
    else:
        args = (source.model, name, TEXT_FLAG, TEXT_WEIGHTS_FLAG)
        tokenizer = chinese_clip.load_tokenizer(*args, weights)
        if pretrained:
            clip = chinese_clip.load_pretrained_model(*args, weights)
        else:
            from transformers import ChineseCLIPModel

            clip = ChineseCLIPModel(chinese_clip.load_config(*args, weights))
        text = chinese_clip.ChineseCLIPTextEncoder.from_clip(clip, tokenizer)
        tower = chinese_clip.ChineseCLIPImageTower.from_clip(clip)
        config, scale = clip.config, float(clip.logit_scale.detach())
    return CLIPPair(_chinese_clip_image(name, tower, config, img_size), text, scale)


# SigLIP's initialisation (Zhai et al. 2023, §3.3): transformers zero-initialises both, expecting weights.
SIGLIP_INITIAL_SCALE, SIGLIP_INITIAL_BIAS = math.log(10.0), -10.0


def _siglip_pair(source: EncoderSource, name: str, pretrained: bool, img_size: int | None, weights: str | None,
                 text_files: dict[str, torch.Tensor] | None) -> CLIPPair:
    if text_files:  # a restore: the checkpoint's files, and its state gives the scale and bias
        text = siglip.SiglipTextEncoder.from_saved_files(text_files)
        tower = siglip.SiglipImageTower.from_config(text.clip_config)
        scale, bias = SIGLIP_INITIAL_SCALE, SIGLIP_INITIAL_BIAS
    else:
        loaded = siglip.load(source.model, name, TEXT_FLAG, TEXT_WEIGHTS_FLAG, pretrained, weights)
        if loaded.model is None:
            from transformers import SiglipModel

            model, scale, bias = SiglipModel(loaded.config), SIGLIP_INITIAL_SCALE, SIGLIP_INITIAL_BIAS
        else:
            model = loaded.model
            scale, bias = float(model.logit_scale.detach()), float(model.logit_bias.detach())
        text = siglip.SiglipTextEncoder.from_siglip(model, loaded.tokenizer, loaded.processor)
        tower = siglip.SiglipImageTower.from_siglip(model)
    image = _siglip_image(name, tower, text.clip_config, text.processor, img_size)
    return CLIPPair(image, text, scale, bias, capped=False)


def describe_projections(image_name: str, text_name: str, paired: bool, image_new: tuple[int, int] | None,
                         text_new: tuple[int, int] | None) -> str:
    """One log line: which projections are CLIP's own and which are new (``(in, out)`` of a new one)."""
    if paired:
        bias = " and bias" if family_of(image_name, IMAGE) is SIGLIP else ""
        return (f"Projections: {image_name} and {text_name} are one CLIP model: its own image and text "
                f"projections and logit scale{bias} are kept (no new layers; epoch 0 is its zero-shot accuracy)")

    def side(kind: str, name: str, new: tuple[int, int] | None) -> str:
        own = f"{name}'s own projection, then " if is_clip_name(name) else ""
        return f"{kind}: {own}a new {new[0]}->{new[1]} projection" if new else f"{kind}: {name}'s own"

    return f"Projections: {side('image', image_name, image_new)}; {side('text', text_name, text_new)}"
