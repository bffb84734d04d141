"""Layer groups of image backbones: --layer-decay's learning rates and --unlocked-groups' lock."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from models.clip_model import CLIPClassifier, build_clip_model
from models.image_encoders import ImageEncoder
from models.text_encoders import build_text_encoder
from tests.clip_helpers import (TINY_CLIP_NAME, open_clip_layout_pair, cache_tiny_open_clip, make_tiny_chinese_clip,
                                make_tiny_siglip)
from tests.weights_helpers import point_caches_at
from training.config import TrainConfig
from training.engine import parameter_groups, train_one_epoch
from training.layers import layer_ids, lock_groups
from utils.errors import ConfigError



def classifier(backbone: nn.Module, dim: int, text_dir) -> CLIPClassifier:
    torch.manual_seed(0)
    return CLIPClassifier(ImageEncoder("test", backbone, dim), build_text_encoder(f"hf:{text_dir}"), 8, 0.07,
                          [["a left bar"], ["a right bar"]])


def resnet18() -> nn.Module:
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    return model


def test_groups_run_from_the_stem_to_the_last_block(tiny_text_encoder):
    for backbone, dim, first, last, count in [
            (resnet18(), 512, "conv1.weight", "layer4.1.bn2.bias", 9),  # stem + 4 stages of 2 blocks
            (timm.create_model("starnet_s050", num_classes=0), 128, "stem.0.conv.weight", "norm.bias", 11)]:
        ids = layer_ids(classifier(backbone, dim, tiny_text_encoder))
        assert len(ids) == len(list(backbone.parameters()))  # every backbone parameter has a group
        assert ids[f"image_encoder.backbone.{first}"] == 0
        assert ids[f"image_encoder.backbone.{last}"] == count - 1 == max(ids.values())


def test_layer_decay_gives_each_group_its_power_of_the_decay(tiny_text_encoder):
    model = classifier(resnet18(), 512, tiny_text_encoder)
    cfg = TrainConfig(data_dir="x", learning_rate=1e-3, image_lr_mult=0.5, layer_decay=0.5)
    rate = {id(p): group["lr"] for group in parameter_groups(model, cfg) for p in group["params"]}
    named = dict(model.named_parameters())
    expected = {"image_encoder.backbone.conv1.weight": 1e-3 * 0.5 * 0.5 ** 8,
                "image_encoder.backbone.layer1.0.conv1.weight": 1e-3 * 0.5 * 0.5 ** 7,
                "image_encoder.backbone.layer4.1.conv2.weight": 1e-3 * 0.5,
                "image_proj.weight": 1e-3, "text_proj.weight": 1e-3}
    assert {name: rate[id(named[name])] for name in expected} == pytest.approx(expected, rel=1e-15)


def test_unlocked_groups_train_only_the_last_ones_and_lock_their_batchnorm(tiny_text_encoder):
    model = classifier(resnet18(), 512, tiny_text_encoder)
    lock_groups(model, 2, "resnet18")  # the two blocks of layer4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    train_one_epoch(model, [(images, torch.tensor([0, 1, 0, 1]), torch.arange(4))], optimizer, scheduler,
                    torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), None, True, 1)
    after = model.state_dict()
    backbone = [key for key in before if key.startswith("image_encoder.") and "num_batches" not in key]
    moved = {key for key in backbone if not torch.equal(after[key], before[key])}
    assert moved and all(key.startswith("image_encoder.backbone.layer4.") for key in moved)
    assert "image_encoder.backbone.layer3.1.bn2.running_mean" not in moved  # a locked BatchNorm's statistics
    assert "image_encoder.backbone.layer4.1.bn2.running_mean" in moved
    assert not torch.equal(after["image_proj.weight"], before["image_proj.weight"])


def test_impossible_groups_are_refused_naming_the_flag(tiny_text_encoder):
    model = classifier(resnet18(), 512, tiny_text_encoder)
    with pytest.raises(ConfigError, match="--unlocked-groups 9: --image-encoder resnet18 has 9 layer groups"):
        lock_groups(model, 9, "resnet18")
    unknown = classifier(nn.Sequential(nn.Flatten(), nn.LazyLinear(4)), 4, tiny_text_encoder)
    with pytest.raises(ConfigError, match="--layer-decay: the layer groups of --image-encoder mine"):
        parameter_groups(unknown, TrainConfig(data_dir="x", image_encoder="mine", layer_decay=0.7))


def test_clip_vit_towers_have_their_groups(tmp_path, monkeypatch):
    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    cache_tiny_open_clip(hub_cache, tmp_path / "tiny_clip_repo")
    chinese, siglip = make_tiny_chinese_clip(tmp_path / "cn"), make_tiny_siglip(tmp_path / "siglip")
    for name, first, block, last in [
            (TINY_CLIP_NAME, "conv1.weight", "transformer.resblocks.0.ln_1.weight", "proj"),
            (f"cn-clip:{chinese}", "vision_model.embeddings.patch_embedding.weight",
             "vision_model.encoder.layers.0.layer_norm1.weight", "projection.weight"),
            (f"siglip:{siglip}", "vision_model.embeddings.patch_embedding.weight",  # no class token, no pre-norm
             "vision_model.encoder.layers.0.layer_norm1.weight", "projection.probe")]:
        model = build_clip_model(name, name, 512, 0.07, [["猫"], ["狗"]], img_size=32)
        ids = layer_ids(model)
        tower = "image_encoder.backbone.tower."
        assert len(ids) == len(list(model.image_encoder.backbone.tower.parameters()))
        assert (ids[tower + first], ids[tower + block], ids[tower + last]) == (0, 1, max(ids.values()))


@pytest.mark.parametrize("layout, first, block, last", [
    ("resnet", "conv1.weight", "layer1.0.conv1.weight", "attnpool.c_proj.weight"),
    ("timm-hf", "trunk.patch_embed.proj.weight", "trunk.blocks.0.norm1.weight", "head.proj.weight"),  # BiomedCLIP's
    ("timm-map", "trunk.patch_embed.proj.weight", "trunk.blocks.0.norm1.weight", "trunk.attn_pool.latent")])
def test_open_clip_resnet_and_timm_towers_have_their_groups(layout, first, block, last, tmp_path, monkeypatch,
                                                           tiny_text_encoder):
    name, model, _ = open_clip_layout_pair(tmp_path, monkeypatch, layout, tiny_text_encoder)
    ids = layer_ids(model)
    tower = "image_encoder.backbone.tower."
    assert set(ids) == {tower + n for n, _ in model.image_encoder.backbone.tower.named_parameters()}
    assert (ids[tower + first], ids[tower + block], ids[tower + last]) == (0, 1, max(ids.values()))
    lock_groups(model, 1, name)
    assert {n for n, p in model.image_encoder.named_parameters() if p.requires_grad} == {
        "backbone.tower." + n[len(tower):] for n, group in ids.items() if group == max(ids.values())}
