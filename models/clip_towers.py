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
tower first converts them to its model's own normalisation, an exact per-channel affine map
(:class:`models.clip_base.Renormalise`). This module holds what is the same for every CLIP family (the
names, the pairing rule, the projections line); each family builds its own towers, found through the
table of :mod:`models.clip_builders`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.clip_base import IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, TEXT_FLAG, TEXT_WEIGHTS_FLAG, CLIPImage, CLIPPair
from models.clip_builders import clip_builders
from models.families import IMAGE, family_of, is_clip_name
from models.names import EncoderSource, split_suffix
from utils.errors import ConfigError
from utils.logging_setup import get_logger

log = get_logger(__name__)


def resolve_clip_source(base: str, pretrained: bool, flag: str = TEXT_FLAG,
                        check_exists: bool = True) -> EncoderSource:
    """``clip:<model>``, ``cn-clip:<model>`` or ``siglip:<model>`` (no suffix) for either tower; ``flag`` is
    the one errors name (``check_exists`` False: a restore, the model's folder may be gone)."""
    family = family_of(base, IMAGE)
    return clip_builders(family.key).resolve(family.model(base), pretrained, flag, check_exists)


def resolve_clip_image(name: str, weights: str | None = None, check_exists: bool = True) -> EncoderSource:
    """Where the CLIP image tower ``name`` comes from (pretrained unless ``:scratch``; loads nothing)."""
    parsed = split_suffix(name)
    if weights is not None and parsed.pretrained is False:
        raise ConfigError(f"{IMAGE_FLAG} {name} asks for random weights but {IMAGE_WEIGHTS_FLAG} {weights} is "
                          f"given; drop one of them")
    source = resolve_clip_source(parsed.base, parsed.pretrained is not False, IMAGE_FLAG, check_exists)
    builders = clip_builders(source.kind)
    if weights is not None and builders.weights_folder and Path(weights).is_file():
        raise ConfigError(f"{IMAGE_WEIGHTS_FLAG} {weights}: {parsed.base} needs a {builders.family.title} model "
                          f"folder (config.json and weights, as save_pretrained writes), not a file")
    return source


def build_clip_image(name: str, load_pretrained: bool = True, img_size: int | None = None,
                     weights: str | None = None, files: dict[str, torch.Tensor] | None = None) -> CLIPImage:
    """The image tower of the CLIP model ``name`` alone (the text tower is not kept).

    ``files`` are a checkpoint's ``image_encoder_files`` (a Chinese-CLIP config, a SigLIP config and
    processor config): with them, and ``load_pretrained`` False, nothing else is read.
    """
    source = resolve_clip_image(name, weights, check_exists=load_pretrained)
    builders = clip_builders(source.kind)
    if files and not load_pretrained:
        return builders.image_from_files(files, name, img_size)
    return builders.image(source, name, source.pretrained and load_pretrained, img_size, weights)


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
    builders = clip_builders(source.kind)
    if text_files and not load_pretrained:
        return builders.pair_from_files(text_files, name, img_size)
    return builders.pair(source, name, source.pretrained and load_pretrained, img_size, weights)


def describe_projections(image_name: str, text_name: str, paired: bool, image_new: tuple[int, int] | None,
                         text_new: tuple[int, int] | None, kept_bias: bool = False) -> str:
    """One log line: which projections are CLIP's own and which are new (``(in, out)`` of a new one);
    ``kept_bias``: the pair kept its model's logit bias (SigLIP's)."""
    if paired:
        bias = " and bias" if kept_bias else ""
        return (f"Projections: {image_name} and {text_name} are one CLIP model: its own image and text "
                f"projections and logit scale{bias} are kept (no new layers; epoch 0 is its zero-shot accuracy)")

    def side(kind: str, name: str, new: tuple[int, int] | None) -> str:
        own = f"{name}'s own projection, then " if is_clip_name(name) else ""
        return f"{kind}: {own}a new {new[0]}->{new[1]} projection" if new else f"{kind}: {name}'s own"

    return f"Projections: {side('image', image_name, image_new)}; {side('text', text_name, text_new)}"
