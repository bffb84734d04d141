"""The value checks that need no data: the fine-tuning methods' ranges and refused combinations."""
from __future__ import annotations

import dataclasses

import pytest

from training.checks import check_finetuning, has_zero_shot_start
from training.config import ConfigError, TrainConfig


def config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(data_dir="data"), **changes)


def test_wise_ft_needs_one_pretrained_clip_model_on_both_towers():
    assert has_zero_shot_start(config(image_encoder="clip:ViT-B/32", text_encoder="clip:ViT-B/32"))
    assert not has_zero_shot_start(config(image_encoder="clip:ViT-B/32:scratch", text_encoder="clip:ViT-B/32:scratch"))
    assert not has_zero_shot_start(config(image_encoder="resnet18:pretrained", text_encoder="clip:ViT-B/32"))
    assert has_zero_shot_start(config(image_encoder="siglip:MedSigLIP-448", text_encoder="siglip:MedSigLIP-448"))
    assert not has_zero_shot_start(config(image_encoder="siglip:MedSigLIP-448", text_encoder="siglip:ViT-B/16"))
    check_finetuning(config(image_encoder="clip:ViT-B/32", text_encoder="clip:ViT-B/32", wise_alpha=0.5))
    with pytest.raises(ConfigError, match="--wise-alpha needs a pretrained zero-shot start"):
        check_finetuning(config(wise_alpha=0.5))


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 32, "accum_steps": 3}, "--accum-steps 3 must divide --batch-size 32"),
    ({"ema_decay": 1.0}, r"--ema-decay must be in \[0, 1\)"),
    ({"epochs": 3, "lp_epochs": 3}, r"--lp-epochs must be in \[0, --epochs\) \(3\)"),
    ({"freeze_image": True, "unlocked_groups": 2}, "drop --freeze-image"),
    ({"lora_rank": -1}, "--lora-rank must be non-negative"),
    ({"lora_rank": 4, "freeze_image": True, "freeze_text": True}, "--freeze-image with --freeze-text leaves none"),
    ({"lora_rank": 4, "layer_decay": 0.8}, "--layer-decay and --unlocked-groups do not apply"),
    ({"lora_rank": 4, "unlocked_groups": 2}, "--layer-decay and --unlocked-groups do not apply"),
    ({"lora_rank": 4, "image_encoder": "clip:ViT-B/32", "text_encoder": "clip:ViT-B/32", "wise_alpha": 0.5},
     "--wise-alpha with --lora-rank"),
])
def test_each_impossible_method_setting_is_one_line_naming_its_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_finetuning(config(**changes))
