"""Where the model looks: class-activation heatmaps of a ``CLIPClassifier`` (the grad-cam package).

grad-cam needs a model whose output is class scores. :class:`ClassLogits` is that model: images
→ ``scale · image_emb @ class_emb.T``, the logits the classifier predicts with, so a heatmap
answers "which pixels raised this class's logit". The class embeddings and the scale are
computed once, without gradients: the heatmap is about the image only.

The layer whose activations are weighted is chosen per encoder family in one table,
:data:`TARGET_LAYER_RULES`, keyed by the family of the image-encoder registry: the deepest
convolutional stage of a CNN whose map is at least :data:`MIN_GRID` cells wide at the input size,
and for a ViT (timm's, or a CLIP image tower's) the first norm of its last block (the class token is all a ViT's last block passes
on, so the patch tokens after that block get no gradient; before its attention they do), with its
tokens folded back into the patch grid.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from models.clip_model import CLIPClassifier
from models.image_encoders import image_encoder_spec
from reporting.fonts import picture_fonts
from reporting.plots import new_figure, save_png
from utils.errors import UserError
from utils.logging_setup import get_logger

log = get_logger(__name__)

EXPLAIN_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
DEFAULT_METHOD = "gradcam"
# Characters that are not allowed in a file name on Linux, macOS or Windows (the overlays may be
# copied to a Windows share); every other character, Chinese included, is kept.
UNSAFE_FILE_CHARACTERS = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')
MAX_NAME_BYTES = 200  # file systems allow 255 bytes per name; UTF-8 Chinese takes 3 per character


class ClassLogits(nn.Module):
    """A classifier as grad-cam sees it: images → logits against every class."""

    def __init__(self, model: CLIPClassifier, class_emb: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("class_emb", class_emb.detach())
        self.register_buffer("scale", scale.detach())

    @classmethod
    @torch.no_grad()
    def of(cls, model: CLIPClassifier) -> ClassLogits:
        model.eval()
        return cls(model, model.encode_classes(), model.scale())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A frozen image tower (--freeze-image) computes activations that carry no gradient, and
        # Grad-CAM needs theirs: an input that asks for a gradient makes every activation carry one.
        images = images.detach().requires_grad_(True)
        return CLIPClassifier.logits(self.model.encode_images(images), self.class_emb, self.scale)


# ---------------------------------------------------------------------------------------------
# Target layers: one rule per encoder family
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetLayer:
    """The module whose activations make the heatmap, and how to turn them into (B, C, h, w)."""

    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None


def tokens_to_grid(tokens: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """ViT tokens (B, prefix + h·w, C) → (B, C, h, w): the class (and register) tokens have no place."""
    patches = tokens[:, prefix_tokens:, :]
    return patches.reshape(patches.size(0), grid[0], grid[1], patches.size(2)).permute(0, 3, 1, 2)


def _resnet_layers(backbone: nn.Module) -> list[TargetLayer]:
    # torchvision: the residual stages at strides 8, 16 and 32, the last one deepest
    return [TargetLayer(backbone.layer2), TargetLayer(backbone.layer3), TargetLayer(backbone.layer4)]


def _efficientnet_layers(backbone: nn.Module) -> list[TargetLayer]:
    # torchvision: the stages ending at strides 4 and 8, not deeper. Every later block's
    # squeeze-and-excitation spreads the whole image's information over every position, so deeper
    # maps do not localise: on the planted-square test the stride-8 stage found 11-12 of 12 squares,
    # the stride-16 stages and the last 1×1 convolution 1-6 (tests/reporting/test_saliency.py).
    return [TargetLayer(backbone.features[2]), TargetLayer(backbone.features[3])]


def channels_last_to_first(features: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) → (B, C, h, w): grad-cam reads channels first."""
    return features.permute(0, 3, 1, 2)


def _feature_stages(backbone: nn.Module) -> list[TargetLayer]:
    # timm names the module of each feature map it offers, the deepest stage last.
    # Some timm models (Swin, MambaOut, ...) keep their feature maps channels-last.
    channels_last = getattr(backbone, "output_fmt", "NCHW") == "NHWC"
    return [TargetLayer(backbone.get_submodule(info["module"]), channels_last_to_first if channels_last else None)
            for info in backbone.feature_info]


def _vit_layer(backbone: nn.Module) -> list[TargetLayer]:
    grid = tuple(backbone.patch_embed.grid_size)
    return [TargetLayer(backbone.blocks[-1].norm1,
                        partial(tokens_to_grid, prefix_tokens=backbone.num_prefix_tokens, grid=grid))]


def _is_vision_transformer(backbone: nn.Module) -> bool:
    blocks = getattr(backbone, "blocks", None)
    return (hasattr(backbone, "patch_embed") and hasattr(backbone, "num_prefix_tokens")
            and isinstance(blocks, nn.Sequential) and hasattr(blocks[-1], "norm1"))


def _any_timm_layer(backbone: nn.Module) -> list[TargetLayer]:
    return _vit_layer(backbone) if _is_vision_transformer(backbone) else _feature_stages(backbone)


def square_tokens_to_grid(tokens: torch.Tensor, prefix_tokens: int, batch_first: bool = True) -> torch.Tensor:
    """ViT tokens of a square input, (B, prefix + n², C) (or (L, B, C)) → (B, C, n, n)."""
    tokens = tokens if batch_first else tokens.transpose(0, 1)
    side = math.isqrt(tokens.size(1) - prefix_tokens)
    return tokens_to_grid(tokens, prefix_tokens, (side, side))


def _open_clip_layers(backbone: nn.Module) -> list[TargetLayer]:
    # models/clip_base.py CLIPImageBackbone: backbone.tower is open_clip's visual tower
    visual = backbone.tower
    if hasattr(visual, "trunk"):  # a timm model inside open_clip (BiomedCLIP)
        return _any_timm_layer(visual.trunk)
    if hasattr(visual, "transformer"):  # open_clip's ViT: a class token, then the patches
        reshape = partial(square_tokens_to_grid, prefix_tokens=1, batch_first=visual.transformer.batch_first)
        return [TargetLayer(visual.transformer.resblocks[-1].ln_1, reshape)]
    return _resnet_layers(visual)  # ModifiedResNet (RN50, RN101): layer2-4 as torchvision's


def _chinese_clip_layers(backbone: nn.Module) -> list[TargetLayer]:
    layers = backbone.tower.vision_model.encoder.layers
    return [TargetLayer(layers[-1].layer_norm1, partial(square_tokens_to_grid, prefix_tokens=1))]


def _siglip_layers(backbone: nn.Module) -> list[TargetLayer]:
    layers = backbone.tower.vision_model.encoder.layers  # patch tokens only: SigLIP pools them with its head
    return [TargetLayer(layers[-1].layer_norm1, partial(square_tokens_to_grid, prefix_tokens=0))]


# Family of the image-encoder registry (models/image_encoders.py) → its candidate target layers,
# the deepest last: the deepest whose map is at least MIN_GRID cells wide at the input size is used.
TARGET_LAYER_RULES: dict[str, Callable[[nn.Module], list[TargetLayer]]] = {
    "ResNet": _resnet_layers,
    "EfficientNet": _efficientnet_layers,
    "ConvNeXt": _feature_stages,
    "StarNet": _feature_stages,
    "ViT": _vit_layer,
    "timm": _any_timm_layer,  # timm:<name>: a ViT-like model, else its feature stages
    "OpenCLIP": _open_clip_layers,  # clip:<model> image towers
    "Chinese-CLIP": _chinese_clip_layers,  # cn-clip:<model> image towers
    "SigLIP": _siglip_layers,  # siglip:<model> image towers
}
# A heatmap coarser than this cannot point at a part of the image (a 32-px input leaves a ResNet's
# last stage a single cell): a shallower stage with a finer map is used then.
MIN_GRID = 4


class SaliencyError(UserError):
    """No heatmap can be made for this model; the message is meant for the user."""


def target_layer(model: CLIPClassifier, img_size: int | None = None) -> TargetLayer:
    """The target layer of the classifier's image encoder, by its registry family: the deepest
    candidate, or with ``img_size`` the deepest whose map is at least MIN_GRID cells at that size."""
    encoder = model.image_encoder
    family = image_encoder_spec(encoder.name).family
    try:
        candidates = TARGET_LAYER_RULES[family](encoder.backbone)
    except (AttributeError, KeyError, IndexError, TypeError) as exc:  # a timm model without feature_info, ...
        raise SaliencyError(f"no heatmap layer is known for image encoder {encoder.name} (family {family}: "
                            f"{type(exc).__name__}: {exc}); add a rule to TARGET_LAYER_RULES in "
                            "reporting/saliency.py") from None
    if img_size is None or len(candidates) == 1:
        return candidates[-1]
    grids = grid_sizes(model, candidates, img_size)
    fine_enough = [layer for layer, grid in zip(candidates, grids) if min(grid) >= MIN_GRID]
    return fine_enough[-1] if fine_enough else candidates[0]


@torch.no_grad()
def grid_sizes(model: CLIPClassifier, layers: Sequence[TargetLayer], img_size: int) -> list[tuple[int, int]]:
    """The (h, w) of each layer's map for an input of ``img_size`` (one forward pass of a blank image)."""
    sizes: dict[int, tuple[int, int]] = {}

    def note(k: int, layer: TargetLayer, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        sizes[k] = tuple((layer.reshape(output) if layer.reshape else output).shape[-2:])

    hooks = [layer.module.register_forward_hook(partial(note, k, layer)) for k, layer in enumerate(layers)]
    try:
        parameter = next(model.image_encoder.parameters())
        model.encode_images(torch.zeros(1, 3, img_size, img_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return [sizes[k] for k in range(len(layers))]


# ---------------------------------------------------------------------------------------------
# Heatmaps
# ---------------------------------------------------------------------------------------------
def class_heatmaps(logits: ClassLogits, images: torch.Tensor, classes: Sequence[int],
                   method: str = DEFAULT_METHOD) -> np.ndarray:
    """Heatmaps (B, H, W) in [0, 1] at the input's size: where ``images[i]`` supports ``classes[i]``.

    ``images`` are model inputs (normalised) on the model's device. eigencam ignores the class:
    it shows the first principal component of the target layer's activations.
    """
    layer = target_layer(logits.model, images.shape[-1])
    targets = [ClassifierOutputTarget(int(k)) for k in classes]
    with torch.enable_grad(), EXPLAIN_METHODS[method](model=logits, target_layers=[layer.module],
                                                      reshape_transform=layer.reshape) as cam:
        heatmaps = cam(input_tensor=images, targets=targets)
        grid = tuple(cam.activations_and_grads.activations[0].shape[-2:])
    if grid == (1, 1):
        _warn_single_cell(logits.model.image_encoder.name, images.shape[-1])
    return heatmaps


@functools.cache
def _warn_single_cell(encoder: str, img_size: int) -> None:
    # Cached: said once per encoder and size, not once per batch or picture.
    log.warning("Heatmaps of %s at %d pixels are uniform: its heatmap layer is a single cell at that size "
                "(a larger --img-size gives it a grid)", encoder, img_size)


def mean_heatmaps(models: Sequence[ClassLogits], images: torch.Tensor, classes: Sequence[int],
                  method: str = DEFAULT_METHOD) -> np.ndarray:
    """The mean of several models' heatmaps (a fold ensemble), each scaled to [0, 1] first."""
    return np.mean([class_heatmaps(model, images, classes, method) for model in models], axis=0)


def as_rgb(image: torch.Tensor) -> np.ndarray:
    """A decoded uint8 image (C, H, W), C in {1, 3} → (H, W, 3) uint8 for display."""
    return image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The heatmap in colour over the image (both H × W; image uint8 RGB): uint8 RGB."""
    return show_cam_on_image(image.astype(np.float32) / 255.0, heatmap, use_rgb=True, image_weight=0.5)


def save_overlay(path: Path, image: np.ndarray, heatmap: np.ndarray, title: str) -> Path:
    """One PNG: the image and its heatmap overlay side by side, ``title`` above (any language)."""
    # The fonts and figure of every other picture of a run (CJK fallback font, no pyplot state).
    with picture_fonts([title]):
        figure = new_figure(6.4, 3.6)
        for ax, picture, caption in zip(figure.subplots(1, 2), (image, overlay(image, heatmap)),
                                        ("image", "heatmap")):
            ax.imshow(picture)
            ax.set_title(caption, fontsize="small")
            ax.axis("off")
        figure.suptitle(title, fontsize="medium")
        return save_png(figure, path)


def safe_file_name(name: str, suffix: str = ".png") -> str:
    """A file name made from an image's path: separators and characters some systems forbid become
    ``_``; letters of any language stay; long names are shortened to fit every file system."""
    stem = UNSAFE_FILE_CHARACTERS.sub("_", name).strip(" ._") or "image"
    encoded = stem.encode("utf-8")[:MAX_NAME_BYTES]
    return encoded.decode("utf-8", errors="ignore") + suffix


def unique_file_names(names: Sequence[str], suffix: str = ".png") -> list[str]:
    """:func:`safe_file_name` of each name, with ``_2``, ``_3`` … where two would collide."""
    used: set[str] = set()
    result = []
    for name in names:
        base = safe_file_name(name, "")
        candidate, count = base + suffix, 1
        while candidate in used:
            count += 1
            candidate = f"{base}_{count}{suffix}"
        used.add(candidate)
        result.append(candidate)
    return result
