"""training.lora on tiny random towers: which layers get adapters in each family, only the adapters (and
the head) get gradients, the frozen base is never written, epoch 0 is the base model, the merged
weights predict as the adapted model (float64), the checkpoint's record refuses another base."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from models.clip_model import CLIPClassifier, build_clip_model
from models.image_encoders import ImageEncoder
from models.loss import class_contrastive_loss
from models.text_encoders import build_text_encoder
from tests.clip_helpers import TINY_CLIP_NAME, open_clip_layout_pair, cache_tiny_open_clip, make_tiny_chinese_clip
from tests.equivalence import assert_same_float64
from tests.weights_helpers import point_caches_at
from training.checkpoint_format import store_frozen_towers
from training.finetune import HEAD
from training.lora import (adapt_towers, base_keys, check_base, has_adapters, is_adapter, lora_record, lora_targets,
                           merge_adapters)
from utils.errors import ConfigError
from utils.io import CheckpointError
from utils.run_dir import RunDir

TEXTS = [["a photo of a cat"], ["a photo of a dog", "a dog"], ["a bird"]]
PAIR = {"image_encoder": TINY_CLIP_NAME, "text_encoder": TINY_CLIP_NAME}


@pytest.fixture
def tiny_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLIPClassifier:
    """The tiny open_clip pair (1-layer ViT and text transformer, nn.MultiheadAttention in both)."""
    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    cache_tiny_open_clip(hub_cache, tmp_path / "tiny_clip_repo")
    torch.manual_seed(0)
    return build_clip_model(TINY_CLIP_NAME, TINY_CLIP_NAME, 16, 0.07, TEXTS, img_size=32)


@pytest.fixture(params=["open_clip pair", "chinese-clip pair", "timm vit + bert"])
def family(request: pytest.FixtureRequest, tmp_path: Path, tiny_text_encoder: Path) -> tuple[CLIPClassifier, dict]:
    """A tiny model of each family LoRA is meant for, and its encoder names."""
    if request.param == "open_clip pair":
        return request.getfixturevalue("tiny_pair"), PAIR
    names = ({"image_encoder": f"cn-clip:{make_tiny_chinese_clip(tmp_path / 'cn_clip')}"} if "chinese" in request.param
             else {"image_encoder": "timm:vit_tiny_patch16_224", "text_encoder": f"hf:{tiny_text_encoder}"})
    names.setdefault("text_encoder", names["image_encoder"])
    torch.manual_seed(0)
    model = build_clip_model(names["image_encoder"], names["text_encoder"], 16, 0.07, TEXTS, img_size=32)
    if "timm" in request.param:  # two of ViT-Ti's 12 blocks are as good a test, six times faster
        model.image_encoder.backbone.blocks = model.image_encoder.backbone.blocks[:2]
    return model, names


def images(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def perturb_adapters(model: nn.Module) -> None:
    """Non-zero B factors (peft starts them at zero), as after training."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if is_adapter(name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.1)


def test_the_rule_picks_attention_and_mlp_layers_of_the_numbered_blocks_in_each_family(tiny_pair, tiny_text_encoder):
    linear, fused = lora_targets(tiny_pair.image_encoder)  # open_clip ViT
    assert fused == ["backbone.tower.transformer.resblocks.0.attn.in_proj_weight"]
    assert linear == ["backbone.tower.transformer.resblocks.0.mlp.c_fc", "backbone.tower.transformer.resblocks.0.mlp.c_proj"]
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0)  # timm: fused qkv Linear
    linear, fused = lora_targets(vit)
    assert fused == [] and linear == [f"blocks.{i}.{layer}" for i in (0, 1)
                                      for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    bert = build_text_encoder(f"hf:{tiny_text_encoder}", True, None, None)  # HuggingFace: q, k, v and dense layers
    linear, _ = lora_targets(bert)
    assert sorted(name.rsplit("layer.0.", 1)[1] for name in linear) == [
        "attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
        "intermediate.dense", "output.dense"]
    assert lora_targets(timm.create_model("resnet18", num_classes=0)) == ([], [])  # convolutions only


def test_only_the_adapters_and_the_head_get_gradients_and_the_base_is_never_written(family):
    model, names = family
    adapt_towers(model, 4, names)
    assert has_adapters(model.image_encoder) and has_adapters(model.text_encoder)
    base = {key: value.clone() for key, value in model.state_dict().items() if key in base_keys(model)}
    order = list(model.state_dict())  # which --ema-decay's ModelEmaV3 pairs by position with its copy's
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss = class_contrastive_loss(*model(images())[:2], torch.tensor([0, 1, 2, 0]), model.scale())
        loss.backward()
        for name, parameter in model.named_parameters():  # every parameter, one by one
            trains = is_adapter(name) or bool(HEAD.match(name))
            assert parameter.requires_grad == trains, name
            assert (parameter.grad is not None) == trains, name
        optimizer.step()
        assert list(model.state_dict()) == order
    if names is PAIR:  # the fused q/k/v of both towers
        assert {"image_encoder", "text_encoder"} == {name.split(".")[0] for name, _ in model.named_parameters()
                                                     if ".attn.lora_A." in name}
    assert all(torch.equal(model.state_dict()[key], value) for key, value in base.items())
    assert any(not torch.equal(value, 0 * value) for name, value in model.named_parameters() if "lora_B" in name)


def test_epoch_0_is_the_base_model_and_the_merged_weights_predict_as_the_adapted_model(family):
    model, names = family
    model = model.double().eval()
    plain = copy.deepcopy(model)
    adapt_towers(model, 4, names)
    x = images(torch.float64)
    with torch.no_grad():
        # B = 0 at the start: exactly the base model (its zero-shot classifier for a pair).
        assert torch.equal(model.encode_images(x), plain.encode_images(x))
        assert torch.equal(model.encode_classes(), plain.encode_classes())
        perturb_adapters(model)
        adapted = model.encode_images(x), model.encode_classes()
        assert not torch.allclose(adapted[0], plain.encode_images(x))  # the adapters do change the model
        merged = copy.deepcopy(model)
        merge_adapters(merged)
        assert not has_adapters(merged) and merged.state_dict().keys() == plain.state_dict().keys()
        # A merged BERT tower has no trainable parameter left, and a frozen text tower's features are cached
        # in float32 (CLIPClassifier._text_features): marked trainable, it runs in float64 as the adapted one.
        merged.requires_grad_(True)
        # Sums of at most 4·width (the MLP) products per layer, 2 layers of width 192 at most (the ViT-Ti).
        assert_same_float64(merged.encode_images(x), adapted[0], 2 * 4 * 192)
        assert_same_float64(merged.encode_classes(), adapted[1], 2 * 4 * 192)


def test_the_frozen_base_goes_to_the_run_file_and_a_checkpoint_keeps_the_adapters_and_the_head(tiny_pair, tmp_path):
    model = tiny_pair
    adapt_towers(model, 2, PAIR)
    state = model.state_dict()
    shared = store_frozen_towers(RunDir(tmp_path / "run"), model, state)
    kept = shared.split(state)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert kept.keys() == trainable and shared.keys == frozenset(base_keys(model))
    assert all(is_adapter(key) or HEAD.match(key) for key in kept)
    assert sum(v.numel() for v in kept.values()) < 0.1 * sum(v.numel() for v in state.values())


def test_a_checkpoint_refuses_base_weights_other_than_its_own(tiny_pair):
    model = tiny_pair
    adapt_towers(model, 2, PAIR)
    record = lora_record(model, 2, PAIR, model.state_dict())["lora"]
    assert record["rank"] == 2 and TINY_CLIP_NAME in record["base"]
    check_base(model, record, "fold_1/checkpoint_best.pth")  # its own base: accepted
    with torch.no_grad():
        model.text_encoder.clip.ln_final.weight.add_(1e-3)  # one frozen weight of the base, slightly changed
    with pytest.raises(CheckpointError, match="fold_1/checkpoint_best.pth: its LoRA adapters were trained on other"):
        check_base(model, record, "fold_1/checkpoint_best.pth")
    with pytest.raises(CheckpointError, match="does not record the base weights"):
        check_base(model, None, "fold_1/checkpoint_best.pth")


def test_a_trainable_tower_without_linear_layers_in_blocks_is_refused_and_a_frozen_one_is_left_whole(tiny_text_encoder):
    def model() -> CLIPClassifier:
        torch.manual_seed(0)
        convolutions = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return CLIPClassifier(ImageEncoder("resnet18", convolutions, 8),
                              build_text_encoder(f"hf:{tiny_text_encoder}", True, None, None), 8, 0.07, TEXTS)

    names = {"image_encoder": "resnet18", "text_encoder": f"hf:{tiny_text_encoder}"}
    with pytest.raises(ConfigError, match="--image-encoder resnet18 has no Linear layers .* --freeze-image"):
        adapt_towers(model(), 4, names)
    frozen_image = model()
    frozen_image.image_encoder.requires_grad_(False)  # --freeze-image
    adapt_towers(frozen_image, 4, names)
    assert not has_adapters(frozen_image.image_encoder) and has_adapters(frozen_image.text_encoder)
    assert not any(p.requires_grad for p in frozen_image.image_encoder.parameters())
    assert frozen_image.image_proj.weight.requires_grad and frozen_image.text_proj.weight.requires_grad


def test_biomedclips_layout_gets_adapters_in_both_towers_and_trains_its_own_heads(tmp_path, monkeypatch,
                                                                                  tiny_text_encoder):
    name, model, _ = open_clip_layout_pair(tmp_path, monkeypatch, "timm-hf", tiny_text_encoder)
    adapt_towers(model, 4, {"image_encoder": name, "text_encoder": name})
    assert has_adapters(model.image_encoder) and has_adapters(model.text_encoder)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if not is_adapter(n)} - {"logit_scale"}
    # open_clip's linear head on the timm trunk, the HuggingFace tower's MLP projection
    assert heads == {"image_encoder.backbone.tower.head.proj.weight", "text_encoder.clip.text.proj.0.weight",
                     "text_encoder.clip.text.proj.2.weight"}
