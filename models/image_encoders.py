"""Image-encoder registry: one table of name → builder (timm-style), with pretrained loading.

An image encoder maps a (B, 3, H, W) batch to pooled features (B, feature_dim).
``NAME:pretrained`` (or ``NAME:true``) loads ImageNet weights; plain ``NAME`` is random init.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from models.names import WeightsNotFoundError, split_suffix, unknown_encoder


@dataclass(frozen=True)
class ImageEncoderSpec:
    name: str
    family: str
    build: Callable[[], nn.Module]  # random-init backbone whose forward returns pooled features
    feature_dim: int
    weights: str | None  # torchvision weights id ("ResNet18_Weights.IMAGENET1K_V1"); None: none exist


def _torchvision_resnet(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = nn.Identity()  # keep the globally pooled features
        return model
    return build


IMAGE_ENCODERS: dict[str, ImageEncoderSpec] = {
    spec.name: spec for spec in [
        ImageEncoderSpec("resnet18", "ResNet", _torchvision_resnet("resnet18"), 512, "ResNet18_Weights.IMAGENET1K_V1"),
        ImageEncoderSpec("resnet34", "ResNet", _torchvision_resnet("resnet34"), 512, "ResNet34_Weights.IMAGENET1K_V1"),
        ImageEncoderSpec("resnet50", "ResNet", _torchvision_resnet("resnet50"), 2048, "ResNet50_Weights.IMAGENET1K_V2"),
        ImageEncoderSpec("resnet101", "ResNet", _torchvision_resnet("resnet101"), 2048,
                         "ResNet101_Weights.IMAGENET1K_V2"),
        ImageEncoderSpec("resnet152", "ResNet", _torchvision_resnet("resnet152"), 2048,
                         "ResNet152_Weights.IMAGENET1K_V2"),
    ]
}


class ImageEncoder(nn.Module):
    """A backbone plus the facts the classifier needs about it."""

    def __init__(self, name: str, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.feature_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


def resolve_image_encoder(name: str) -> tuple[ImageEncoderSpec, bool]:
    """The registry entry for ``name`` and whether pretrained weights are asked for."""
    parsed = split_suffix(name)
    spec = IMAGE_ENCODERS.get(parsed.base)
    if spec is None:
        raise unknown_encoder("image", "--image-encoder", parsed.base, IMAGE_ENCODERS,
                              "; add ':pretrained' for ImageNet weights")
    pretrained = bool(parsed.pretrained)
    if pretrained and spec.weights is None:
        raise WeightsNotFoundError(f"--image-encoder {name}: no pretrained weights exist for "
                                   f"'{spec.name}'; use '{spec.name}' (random init)")
    return spec, pretrained


def _load_torchvision_weights(spec: ImageEncoderSpec, backbone: nn.Module) -> None:
    weights = torchvision.models.get_weight(spec.weights)
    cache_file = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, HTTPError, OSError: offline or blocked
        raise WeightsNotFoundError(
            f"--image-encoder {spec.name}:pretrained: ImageNet weights are not in {cache_file} and "
            f"could not be downloaded ({type(exc).__name__}); on a machine with internet run "
            f"'python -m models.download {spec.name}:pretrained' and copy the cache folder "
            f"(TORCH_HOME) here") from exc
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    backbone.load_state_dict(state)


def build_image_encoder(name: str, load_pretrained: bool = True) -> ImageEncoder:
    """Build the encoder ``name``; ``load_pretrained=False`` skips weight loading (checkpoint restore)."""
    spec, pretrained = resolve_image_encoder(name)
    backbone = spec.build()
    if pretrained and load_pretrained:
        _load_torchvision_weights(spec, backbone)
    return ImageEncoder(spec.name, backbone, spec.feature_dim)
