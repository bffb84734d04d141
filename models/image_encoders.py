"""Image-encoder registry: one table of name → builder (timm-style), with pretrained loading.

An image encoder maps a (B, 3, H, W) batch to pooled features (B, feature_dim).
``NAME:pretrained`` (or ``NAME:true``) loads ImageNet weights; plain ``NAME`` is random init;
``--image-weights FILE`` loads that file instead (any encoder). ``timm:<model name>`` opens the
door to every timm model. ``clip:<model>``, ``cn-clip:<model>`` and ``siglip:<model>`` are CLIP image towers
(:mod:`models.clip_towers`), pretrained unless ``:scratch``, as on the text side. Weights come from the file, else the library's cache, else a download
(:mod:`models.weights`); when none can be had the build fails, never falls back to random weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from models.clip_base import IMAGE_FLAG, IMAGE_WEIGHTS_FLAG
from models.clip_towers import build_clip_image, resolve_clip_image
from models.families import CLIP_FAMILIES, IMAGE, TIMM, family_of, is_clip_name
from models.names import UnknownEncoderError, WeightsNotFoundError, split_suffix, unknown_encoder
from models.weights import (WeightsLocation, fetch_weights_file, incompatible_weights, read_state_dict)
from utils.errors import ConfigError, closest
from utils.logging_setup import get_logger

log = get_logger(__name__)

FLAG, WEIGHTS_FLAG = IMAGE_FLAG, IMAGE_WEIGHTS_FLAG
TIMM_PREFIX = TIMM.prefix


@dataclass(frozen=True)
class ImageEncoderSpec:
    """One row of the registry.

    ``weights`` is a torchvision weights id (``ResNet18_Weights.IMAGENET1K_V1``) or a timm
    ``model.tag``; None means no pretrained weights exist. ``feature_dim`` None means it is read
    from the built model (``timm:`` names). ``head`` is the torchvision classifier attribute that
    is replaced by ``Identity``. ``sized`` builders take the input size (ViT position embeddings).
    """

    name: str
    family: str
    library: str  # "torchvision", "timm", or "clip"/"cn-clip"/"siglip" (a CLIP image tower)
    arch: str  # torchvision builder name, timm model name, or the CLIP model
    feature_dim: int | None
    weights: str | None
    head: str | None = None
    sized: bool = False

    def weights_location(self) -> WeightsLocation | None:
        """Where the library keeps this encoder's pretrained weights (None: none exist)."""
        if self.weights is None or self.library in {family.key for family in CLIP_FAMILIES}:  # see models.download
            return None
        if self.library == "torchvision":
            return WeightsLocation(url=torchvision.models.get_weight(self.weights).url)
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.weights)
        if cfg is not None and cfg.hf_hub_id:
            files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
            return WeightsLocation(repo=cfg.hf_hub_id, filenames=files)
        if cfg is not None and cfg.url:
            return WeightsLocation(url=cfg.url)
        return None


def _torchvision(name: str, family: str, arch: str, dim: int, weights: str, head: str) -> ImageEncoderSpec:
    return ImageEncoderSpec(name, family, "torchvision", arch, dim, weights, head=head)


def _timm(name: str, family: str, arch: str, dim: int, tag: str | None, sized: bool = False) -> ImageEncoderSpec:
    return ImageEncoderSpec(name, family, "timm", arch, dim, f"{arch}.{tag}" if tag else None, sized=sized)


_EFFICIENTNET_DIMS = (1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560)

IMAGE_ENCODERS: dict[str, ImageEncoderSpec] = {
    spec.name: spec for spec in [
        _torchvision("resnet18", "ResNet", "resnet18", 512, "ResNet18_Weights.IMAGENET1K_V1", "fc"),
        _torchvision("resnet34", "ResNet", "resnet34", 512, "ResNet34_Weights.IMAGENET1K_V1", "fc"),
        _torchvision("resnet50", "ResNet", "resnet50", 2048, "ResNet50_Weights.IMAGENET1K_V2", "fc"),
        _torchvision("resnet101", "ResNet", "resnet101", 2048, "ResNet101_Weights.IMAGENET1K_V2", "fc"),
        _torchvision("resnet152", "ResNet", "resnet152", 2048, "ResNet152_Weights.IMAGENET1K_V2", "fc"),
        # StarNet (Ma et al., CVPR 2024): ImageNet-1k weights exist for s1-s4 only.
        _timm("starnet_s1", "StarNet", "starnet_s1", 192, "in1k"),
        _timm("starnet_s2", "StarNet", "starnet_s2", 256, "in1k"),
        _timm("starnet_s3", "StarNet", "starnet_s3", 256, "in1k"),
        _timm("starnet_s4", "StarNet", "starnet_s4", 256, "in1k"),
        _timm("starnet_s050", "StarNet", "starnet_s050", 128, None),
        _timm("starnet_s100", "StarNet", "starnet_s100", 160, None),
        _timm("starnet_s150", "StarNet", "starnet_s150", 192, None),
        # torchvision has ImageNet weights for all of b0-b7 (timm's own lack b6/b7).
        *[_torchvision(f"efficientnet-b{i}", "EfficientNet", f"efficientnet_b{i}", dim,
                       f"EfficientNet_B{i}_Weights.IMAGENET1K_V1", "classifier")
          for i, dim in enumerate(_EFFICIENTNET_DIMS)],
        # ImageNet-22k pre-training, fine-tuned on ImageNet-1k: the strongest transfer of the
        # released ConvNeXt weights, and the same recipe for all four sizes.
        _timm("convnext-tiny", "ConvNeXt", "convnext_tiny", 768, "fb_in22k_ft_in1k"),
        _timm("convnext-small", "ConvNeXt", "convnext_small", 768, "fb_in22k_ft_in1k"),
        _timm("convnext-base", "ConvNeXt", "convnext_base", 1024, "fb_in22k_ft_in1k"),
        _timm("convnext-large", "ConvNeXt", "convnext_large", 1536, "fb_in22k_ft_in1k"),
        # ViT-B/16 at any --img-size divisible by 16 (position embeddings resampled on load).
        _timm("vit", "ViT", "vit_base_patch16_224", 768, "augreg2_in21k_ft_in1k", sized=True),
    ]
}


def valid_image_encoder_names() -> list[str]:
    return list(IMAGE_ENCODERS) + [f"{TIMM_PREFIX}<timm model name>", "clip:<model> (as --text-encoder)",
                                   "cn-clip:<model> (as --text-encoder)", "siglip:<model> (as --text-encoder)"]


class ImageEncoder(nn.Module):
    """A backbone plus the facts the classifier needs about it."""

    def __init__(self, name: str, backbone: nn.Module, feature_dim: int,
                 files: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.feature_dim = feature_dim
        self._files = files or {}

    def saved_files(self) -> dict[str, torch.Tensor]:
        """Files a checkpoint keeps to rebuild this encoder without any cache (a Chinese-CLIP or SigLIP config)."""
        return self._files

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


def _timm_spec(model: str) -> ImageEncoderSpec:
    """A registry row for ``timm:<model>`` (``model`` may carry a ``.tag``)."""
    import timm
    from timm.models import get_pretrained_cfg

    if not model or not timm.is_model(model):
        match = closest(model, timm.list_models())
        hint = f" (did you mean '{TIMM_PREFIX}{match}'?)" if match else ""
        raise UnknownEncoderError(f"{FLAG}: unknown timm model '{model}'{hint}; "
                                  f"timm.list_models() lists the {len(timm.list_models())} valid names")
    cfg = get_pretrained_cfg(model)
    has_weights = cfg is not None and bool(cfg.hf_hub_id or cfg.url)
    sized = cfg is not None and bool(cfg.fixed_input_size)
    return ImageEncoderSpec(f"{TIMM_PREFIX}{model}", "timm", "timm", model, None,
                            model if has_weights else None, sized=sized)


def image_encoder_spec(base: str) -> ImageEncoderSpec:
    """The registry row of a name without suffix (``resnet50``, ``timm:convnext_nano``, ``clip:ViT-B/32``)."""
    if is_clip_name(base):
        # Describes only (saliency asks for a restored model's family): a cn-clip/siglip folder may be gone.
        source = resolve_clip_image(base, check_exists=False)
        return ImageEncoderSpec(base, family_of(base, IMAGE).title, source.kind, source.model, None, source.tag)
    if family_of(base, IMAGE) is TIMM:
        return _timm_spec(base[len(TIMM_PREFIX):])
    spec = IMAGE_ENCODERS.get(base)
    if spec is None:
        raise unknown_encoder("image", FLAG, base, valid_image_encoder_names(),
                              "; add ':pretrained' for ImageNet weights")
    return spec


def resolve_image_encoder(name: str, weights: str | None = None) -> tuple[ImageEncoderSpec, bool]:
    """The registry row for ``name`` and whether weights are to be loaded.

    Weights are loaded for ``NAME:pretrained`` and whenever an explicit ``weights`` file is given.
    """
    parsed = split_suffix(name)
    if is_clip_name(parsed.base):
        source = resolve_clip_image(name, weights)
        return image_encoder_spec(parsed.base), source.pretrained
    spec = image_encoder_spec(parsed.base)
    if weights is not None:
        if parsed.pretrained is False:
            raise ConfigError(f"{FLAG} {name} asks for random weights but {WEIGHTS_FLAG} {weights} is given; "
                              f"drop one of them")
        return spec, True
    pretrained = bool(parsed.pretrained)
    if pretrained and spec.weights is None:
        raise WeightsNotFoundError(f"{FLAG} {name}: no pretrained weights exist for '{spec.name}'; use "
                                   f"'{spec.name}' (random init) or give your own with {WEIGHTS_FLAG} FILE")
    return spec, pretrained


def random_init_note(name: str, weights: str | None = None) -> str | None:
    """The start-up line for an image encoder that starts from random weights without being asked to.

    None when weights are loaded (``:pretrained``, ``--image-weights``) or random weights were asked
    for by name (``:scratch``): only a plain name starts from random weights silently.
    """
    parsed = split_suffix(name)
    spec, pretrained = resolve_image_encoder(name, weights)
    if pretrained or parsed.pretrained is False:
        return None
    if spec.weights is None:
        return (f"{FLAG} {name}: random initialisation (no pretrained weights are published for it; give "
                f"your own with {WEIGHTS_FLAG} FILE)")
    return f"{FLAG} {name}: random initialisation; add :pretrained for ImageNet weights ({name}:pretrained)"


def image_weights_file(spec: ImageEncoderSpec, name: str, explicit: str | None = None) -> Path:
    """The weights file of ``spec``: ``explicit``, else the library cache, else a download."""
    return fetch_weights_file(spec.weights_location(), FLAG, name, WEIGHTS_FLAG, explicit)


def _build_torchvision(spec: ImageEncoderSpec, weights_file: Path | None) -> nn.Module:
    model = getattr(torchvision.models, spec.arch)(weights=None)
    setattr(model, spec.head, nn.Identity())  # keep the globally pooled features
    if weights_file is not None:
        state = read_state_dict(weights_file, WEIGHTS_FLAG)
        state = {k: v for k, v in state.items() if not k.startswith(f"{spec.head}.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise incompatible_weights(WEIGHTS_FLAG, weights_file, spec.name, exc) from exc
    return model


def _build_timm(spec: ImageEncoderSpec, img_size: int | None, weights_file: Path | None) -> nn.Module:
    import timm

    kwargs = {"img_size": img_size} if spec.sized and img_size else {}
    if weights_file is None:
        return timm.create_model(spec.arch, pretrained=False, num_classes=0, **kwargs)
    cfg_name = spec.weights or spec.arch
    state = read_state_dict(weights_file, WEIGHTS_FLAG)
    # The classifier is dropped here and the pretrained config told it has none, so that timm
    # loads strictly (it relaxes strictness whenever it drops a head itself) while still applying
    # its own checkpoint filter (e.g. resampling ViT position embeddings to img_size).
    from timm.models import get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(cfg_name)
    heads = (pretrained_cfg.classifier if pretrained_cfg is not None else None) or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {k: v for k, v in state.items() if not any(k in (f"{h}.weight", f"{h}.bias") for h in heads)}
    try:
        model = timm.create_model(cfg_name, pretrained=True, num_classes=0, **kwargs,
                                  pretrained_cfg_overlay={"state_dict": state, "num_classes": 0})
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise incompatible_weights(WEIGHTS_FLAG, weights_file, spec.name, exc) from exc
    model.pretrained_cfg.pop("state_dict", None)  # timm keeps its config: do not keep a weights copy
    return model


def _feature_dim(spec: ImageEncoderSpec, backbone: nn.Module) -> int:
    if spec.feature_dim is not None:
        return spec.feature_dim
    # timm: with num_classes=0 the forward returns the pre-logits features.
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def _check_patch_multiple(name: str, backbone: nn.Module, img_size: int | None) -> None:
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if img_size is None or patch is None:
        return
    size = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    if img_size % size:
        raise ConfigError(f"--img-size {img_size}: {FLAG} {name} needs a multiple of its patch size {size} "
                          f"(e.g. {img_size - img_size % size or size})")


def build_image_encoder(name: str, load_pretrained: bool = True, img_size: int | None = None,
                        weights: str | None = None, files: dict[str, torch.Tensor] | None = None) -> ImageEncoder:
    """Build the encoder ``name``.

    ``img_size`` is passed to builders whose architecture depends on it (ViT); ``weights`` is an
    explicit weights file; ``load_pretrained=False`` skips weight loading (checkpoint restore);
    ``files`` are a checkpoint's ``image_encoder_files``.
    """
    if is_clip_name(name):
        clip = build_clip_image(name, load_pretrained, img_size, weights, files)
        return ImageEncoder(split_suffix(name).base, clip.backbone, clip.feature_dim, clip.files)
    spec, pretrained = resolve_image_encoder(name, weights)
    weights_file = None
    if pretrained and load_pretrained:
        weights_file = image_weights_file(spec, name, weights)
        log.info("Image encoder %s: weights from %s", name, weights_file)
    if spec.library == "torchvision":
        backbone = _build_torchvision(spec, weights_file)
    else:
        backbone = _build_timm(spec, img_size, weights_file)
    if spec.sized:
        _check_patch_multiple(name, backbone, img_size)
    return ImageEncoder(spec.name, backbone, _feature_dim(spec, backbone))
