"""The image backbone's layer groups (stem, blocks or stages, final norm), for layer-wise learning-rate
decay (``--layer-decay``, BEiT / timm) and partial unfreezing (``--unlocked-groups``, open_clip's
``--lock-image-unlocked-groups``).

timm models know their groups (``group_matcher``); for the others the same kind of matcher is given
here, and timm's ``group_parameters`` numbers the groups from the input (0) to the output.
"""
from __future__ import annotations

from timm.models import group_parameters
from torch import nn

from models.clip_model import CLIPClassifier
from utils.errors import ConfigError

# Matchers (timm's format) of the backbones without ``group_matcher``, by class name.
MATCHERS = {
    "ResNet": {"stem": r"^(?:conv1|bn1)\.", "blocks": r"^layer(\d+)\.(\d+)"},  # torchvision
    "EfficientNet": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\.(\d+)"},  # torchvision
    "VisionTransformer": {"stem": r"^(?:conv1|class_embedding|positional_embedding|ln_pre)",  # open_clip
                          "blocks": [(r"^transformer\.resblocks\.(\d+)", None), (r"^(?:ln_post|proj)", (99999,))]},
    "ChineseCLIPImageTower": {"stem": r"^vision_model\.(?:embeddings|pre_layrnorm)",
                              "blocks": [(r"^vision_model\.encoder\.layers\.(\d+)", None),
                                         (r"^(?:vision_model\.post_layernorm|projection)", (99999,))]},
    "SiglipImageTower": {"stem": r"^vision_model\.embeddings",  # no class token, no pre-norm
                         "blocks": [(r"^vision_model\.encoder\.layers\.(\d+)", None),
                                    (r"^(?:vision_model\.post_layernorm|projection)", (99999,))]},
    "ModifiedResNet": {"stem": r"^(?:conv[123]|bn[123])\.",  # open_clip's CLIP ResNets (RN50 ...)
                       "blocks": [(r"^layer(\d+)\.(\d+)", None), (r"^attnpool\.", (99999,))]},
}
PREFIX = "image_encoder.backbone."


def layer_ids(model: CLIPClassifier) -> dict[str, int] | None:
    """Each image-backbone parameter's group, 0 at the input, by its name in ``model``; None when the
    backbone's groups are not known."""
    backbone, prefix = model.image_encoder.backbone, PREFIX
    if hasattr(backbone, "tower"):  # a CLIP tower behind its renormalisation
        backbone, prefix = backbone.tower, PREFIX + "tower."
    if type(backbone).__name__ == "TimmModel":  # open_clip's timm tower (BiomedCLIP): a timm trunk, a head
        return {prefix + name: group for name, group in timm_tower_ids(backbone).items()}
    matcher = (backbone.group_matcher(coarse=False) if hasattr(backbone, "group_matcher")
               else MATCHERS.get(type(backbone).__name__))
    if matcher is None:
        return None
    return {prefix + name: group for name, group in group_parameters(backbone, matcher, reverse=True).items()}


def timm_tower_ids(tower: nn.Module) -> dict[str, int]:
    """open_clip's ``TimmModel``: its timm trunk's own groups, then open_clip's head as the last group."""
    trunk = group_parameters(tower.trunk, tower.trunk.group_matcher(coarse=False), reverse=True)
    head = max(trunk.values()) + 1
    return {**{f"trunk.{name}": group for name, group in trunk.items()},
            **{f"head.{name}": head for name, _ in tower.head.named_parameters()}}


def layer_groups(model: CLIPClassifier, flag: str, image_encoder: str) -> dict[str, int]:
    ids = layer_ids(model)
    if ids is None:
        raise ConfigError(f"{flag}: the layer groups of --image-encoder {image_encoder} "
                          f"({type(model.image_encoder.backbone).__name__}) are not known; known are timm models, "
                          f"torchvision ResNet/EfficientNet and CLIP towers")
    return ids


def lock_groups(model: CLIPClassifier, unlocked: int, image_encoder: str) -> None:
    """Freeze every image-backbone group but the last ``unlocked`` (0: none is locked). A locked
    BatchNorm stays in eval mode (``CLIPClassifier.train``): its statistics are locked too. Idempotent: the
    groups come from the names, not from what trains now."""
    if not unlocked:
        return
    ids = layer_groups(model, "--unlocked-groups", image_encoder)
    count = max(ids.values()) + 1
    if unlocked >= count:
        raise ConfigError(f"--unlocked-groups {unlocked}: --image-encoder {image_encoder} has {count} layer groups; "
                          f"unlock fewer (or drop the flag to train all)")
    parameters = dict(model.named_parameters())
    for name, group in ids.items():
        parameters[name].requires_grad_(group >= count - unlocked)


def decay_multipliers(model: CLIPClassifier, layer_decay: float, image_encoder: str) -> dict[str, float]:
    """Learning-rate factor of each image-backbone parameter: ``layer_decay ** (last group - its group)``
    (timm's ``param_groups_layer_decay``: the last group keeps the tower's rate)."""
    if layer_decay == 1:
        return {}
    ids = layer_groups(model, "--layer-decay", image_encoder)
    last = max(ids.values())
    return {name: layer_decay ** (last - group) for name, group in ids.items()}

