"""Encoder families: the one table of which names belong to whom (docs/design.md §3).

A name given to ``--image-encoder`` or ``--text-encoder`` belongs to exactly one family, told by its
prefix (``clip:``, ``cn-clip:``, ``siglip:``, ``hf:``, ``timm:``) or, without one, by the tower: the image
registry's table (torchvision and timm backbones: ResNet, EfficientNet, StarNet, ConvNeXt, ViT) or
a HuggingFace text encoder (an alias such as ``bert-base-chinese``, or a model folder). The family
says whether a name starts from pretrained weights when it carries no ``:pretrained`` /
``:scratch`` suffix, whose weights those are, and how the methods paragraph says so. Everyone else
asks here (:func:`family_of`) instead of testing prefixes; the builders live in the family's module
(``image_encoders``, ``text_encoders``, and for the CLIP families ``open_clip_towers``, ``chinese_clip``,
``siglip``, found by family key through the table of ``clip_builders``). This module imports none of
them: naming a family needs neither torch nor transformers.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.names import EncoderName, split_suffix

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class EncoderFamily:
    """One family: its key (``ImageEncoderSpec.library`` for image towers), prefix and defaults."""

    key: str
    title: str  # in --list-encoders and the methods paragraph
    prefix: str  # "" for the names of a registry table (told apart by the tower)
    towers: frozenset[str]
    pretrained_by_default: bool  # without a :pretrained / :scratch suffix
    weights: str | None  # whose pretrained weights, in the methods paragraph ("ImageNet"); None: the model's own

    def owns(self, base: str, tower: str) -> bool:
        return tower in self.towers and (base.startswith(self.prefix) if self.prefix else True)

    def model(self, base: str) -> str:
        """The name after the prefix: ``clip:ViT-B/32`` → ``ViT-B/32``."""
        return base[len(self.prefix):]

    def is_pretrained(self, parsed: EncoderName) -> bool:
        return self.pretrained_by_default if parsed.pretrained is None else parsed.pretrained


OPEN_CLIP = EncoderFamily("clip", "OpenCLIP", "clip:", frozenset({IMAGE, TEXT}), True, "OpenCLIP")
CHINESE_CLIP = EncoderFamily("cn-clip", "Chinese-CLIP", "cn-clip:", frozenset({IMAGE, TEXT}), True, "Chinese-CLIP")
SIGLIP = EncoderFamily("siglip", "SigLIP", "siglip:", frozenset({IMAGE, TEXT}), True, "SigLIP")
TIMM = EncoderFamily("timm", "timm", "timm:", frozenset({IMAGE}), False, "ImageNet")
HUGGINGFACE = EncoderFamily("hf", "HuggingFace", "hf:", frozenset({TEXT}), True, None)
# Without a prefix: the image registry's table, or a HuggingFace alias or folder on the text side.
IMAGE_REGISTRY = EncoderFamily("registry", "registry", "", frozenset({IMAGE}), False, "ImageNet")
HUGGINGFACE_NAMED = EncoderFamily("hf", "HuggingFace", "", frozenset({TEXT}), True, None)

# Prefixed families first: the unprefixed ones own whatever is left on their tower.
FAMILIES = (OPEN_CLIP, CHINESE_CLIP, SIGLIP, TIMM, HUGGINGFACE, IMAGE_REGISTRY, HUGGINGFACE_NAMED)
# Models whose one name serves both towers (a pair keeps the model's own projections and logit scale).
CLIP_FAMILIES = (OPEN_CLIP, CHINESE_CLIP, SIGLIP)


def family_of(name: str, tower: str) -> EncoderFamily:
    """The family of encoder ``name`` (suffix allowed) on ``tower`` ("image" or "text")."""
    base = split_suffix(name).base
    return next(family for family in FAMILIES if family.owns(base, tower))


def is_clip_name(name: str) -> bool:
    """A CLIP model's name (``clip:``, ``cn-clip:`` or ``siglip:``): the same name serves both towers."""
    return family_of(name, IMAGE) in CLIP_FAMILIES


def starts_pretrained(name: str, tower: str) -> bool:
    """Whether ``name`` loads pretrained weights (without an explicit weights file)."""
    return family_of(name, tower).is_pretrained(split_suffix(name))


@dataclass(frozen=True)
class Start:
    """How a tower's weights began, in the words of the methods paragraph."""

    english: str
    chinese: str


def weights_start(name: str, tower: str, weights_file: str | None = None) -> Start:
    """``initialised with pretrained OpenCLIP weights`` / ``randomly initialised`` / from a file."""
    if weights_file:
        return Start(f"initialised from the weights in {weights_file}", f"以 {weights_file} 中的权重初始化")
    family = family_of(name, tower)
    if not family.is_pretrained(split_suffix(name)):
        return Start("randomly initialised", "随机初始化")
    if family.weights is None:  # a HuggingFace model: its hub name or folder is the whole story
        return Start("with its pretrained weights", "预训练权重")
    return Start(f"initialised with pretrained {family.weights} weights", f"{family.weights} 预训练权重")
