"""Which family owns a name, and whether the name starts from pretrained weights."""
from __future__ import annotations

import pytest

from models.families import (CHINESE_CLIP, HUGGINGFACE, HUGGINGFACE_NAMED, IMAGE, IMAGE_REGISTRY, OPEN_CLIP, SIGLIP,
                             TEXT, TIMM, family_of, is_clip_name, starts_pretrained)


@pytest.mark.parametrize("name, tower, family", [
    ("resnet18", IMAGE, IMAGE_REGISTRY), ("resnet18:pretrained", IMAGE, IMAGE_REGISTRY),
    ("timm:convnext_atto", IMAGE, TIMM), ("clip:ViT-B/32", IMAGE, OPEN_CLIP), ("clip:ViT-B/32", TEXT, OPEN_CLIP),
    ("cn-clip:ViT-B/16:scratch", IMAGE, CHINESE_CLIP), ("cn-clip:ViT-B/16", TEXT, CHINESE_CLIP),
    ("hf:/models/bert", TEXT, HUGGINGFACE), ("bert-base-chinese", TEXT, HUGGINGFACE_NAMED),
    ("clip-like-folder", TEXT, HUGGINGFACE_NAMED),  # "clip" without the colon is no prefix
    ("siglip:MedSigLIP-448", IMAGE, SIGLIP), ("siglip:/models/medsiglip:scratch", TEXT, SIGLIP),
    ("siglip-folder", TEXT, HUGGINGFACE_NAMED),
])
def test_each_name_belongs_to_one_family(name, tower, family):
    assert family_of(name, tower) is family


@pytest.mark.parametrize("name, tower, pretrained", [
    ("resnet18", IMAGE, False), ("resnet18:pretrained", IMAGE, True), ("timm:convnext_atto", IMAGE, False),
    ("clip:ViT-B/32", IMAGE, True), ("clip:ViT-B/32:scratch", IMAGE, False), ("cn-clip:ViT-B/16", IMAGE, True),
    ("bert-base-chinese", TEXT, True), ("bert-base-chinese:scratch", TEXT, False), ("clip:RN50:false", TEXT, False),
    ("siglip:google/medsiglip-448", IMAGE, True), ("siglip:MedSigLIP-448:scratch", TEXT, False),
])
def test_image_backbones_start_random_and_clip_and_text_towers_pretrained(name, tower, pretrained):
    assert starts_pretrained(name, tower) is pretrained


def test_only_clip_models_serve_both_towers():
    assert is_clip_name("clip:ViT-B/32:scratch") and is_clip_name("cn-clip:ViT-H/14")
    assert is_clip_name("siglip:MedSigLIP-448") and is_clip_name("siglip:./my_siglip:scratch")
    assert not is_clip_name("timm:vit_base_patch16_clip_224") and not is_clip_name("resnet50")
