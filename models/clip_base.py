"""What the three CLIP families' modules share, and the shape of their operations (docs/design.md §3).

Each CLIP family (``clip:`` open_clip, ``cn-clip:`` Chinese-CLIP, ``siglip:`` SigLIP) implements the same
operations in its own module (:mod:`models.open_clip_towers`, :mod:`models.chinese_clip`,
:mod:`models.siglip`) and describes them with one :class:`CLIPFamilyBuilders`; :mod:`models.clip_builders`
holds the table of the three. The pieces here sit below all of them (the family modules import this
module, never :mod:`models.clip_towers`, so that no import circle forms): the built towers
(:class:`CLIPImage`, :class:`CLIPPair`), the renormalisation from the trainer's ImageNet statistics to a
CLIP model's own, the flags that errors name and the ``--list-encoders`` counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from models.families import EncoderFamily
from models.names import EncoderSource
from models.weights import WeightsLocation
from utils.errors import ConfigError

IMAGE_FLAG, IMAGE_WEIGHTS_FLAG = "--image-encoder", "--image-weights"
TEXT_FLAG, TEXT_WEIGHTS_FLAG = "--text-encoder", "--text-weights"
# The statistics data/transforms.py normalises every model input with (models may not import data;
# tests/models/test_clip_towers.py checks that the two agree).
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)

Files = dict[str, torch.Tensor]  # a checkpoint's saved files (config, tokenizer, processor) as byte tensors


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
    files: Files = field(default_factory=dict)


@dataclass
class CLIPPair:
    """Both towers of one CLIP model, its logit scale (a log, as CLIP stores it) and, for SigLIP, its logit
    bias and no cap on the scale."""

    image: CLIPImage
    text: nn.Module
    logit_scale: float
    logit_bias: float | None = None
    capped: bool = True


@dataclass(frozen=True)
class CLIPCounts:
    """Parameters of a CLIP model's two towers (each with its projection) and its embedding size."""

    image: int | None
    text: int | None
    embed_dim: int | None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_size(name: str, size: int | None, img_size: int | None, why: str) -> None:
    """Refuse an ``--img-size`` a fixed-size tower (open_clip's position embeddings, SigLIP's processor) cannot take."""
    if img_size is not None and size is not None and int(size) != img_size:
        raise ConfigError(f"--img-size {img_size}: {IMAGE_FLAG} {name} was built for {size}-pixel images ({why}); "
                          f"use --img-size {size}")


@dataclass(frozen=True)
class CLIPFamilyBuilders:
    """One CLIP family's operations, each with the same signature in every family, so that callers ask the
    table (:func:`models.clip_builders.clip_builders`) instead of comparing family keys.

    ``name`` is the encoder name as given (errors quote it); ``pretrained`` already combines the name's
    suffix with the caller's ``load_pretrained``; ``files`` are a checkpoint's saved files (a restore:
    nothing else is read).
    """

    family: EncoderFamily
    # (model after the prefix, pretrained, flag errors name, check_exists) → where it comes from, loads nothing
    resolve: Callable[[str, bool, str, bool], EncoderSource]
    # (source, name, pretrained, img_size, weights) → the image tower alone
    image: Callable[[EncoderSource, str, bool, int | None, str | None], CLIPImage]
    image_from_files: Callable[[Files, str, int | None], CLIPImage]  # (files, name, img_size)
    # (source, text side's name, pretrained, img_size, text weights) → both towers, loaded once
    pair: Callable[[EncoderSource, str, bool, int | None, str | None], CLIPPair]
    pair_from_files: Callable[[Files, str, int | None], CLIPPair]  # (the text side's files, name, img_size)
    text: Callable[[EncoderSource, str, bool, str | None], nn.Module]  # (source, name, pretrained, weights)
    text_from_files: Callable[[Files], nn.Module]
    weights_location: Callable[[EncoderSource], WeightsLocation | None]  # where the cached weights sit
    counts: Callable[[EncoderSource], CLIPCounts]  # --list-encoders sizes, counted on the meta device
    weights_folder: bool  # --image-weights / --text-weights must be a model folder (save_pretrained's)
