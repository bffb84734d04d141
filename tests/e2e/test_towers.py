"""Tower control: --freeze-text encodes class texts once per fold, --freeze-image leaves the
backbone bit-identical, and the learning-rate multipliers reach the right parameters."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision

import train_clip
import training.engine
from models.clip_model import build_clip_model
from training.checkpoint_format import full_model_state
from training.config import TrainConfig
from utils.io import load_checkpoint

CLASS_TEXTS = [["class a"], ["class b", "another b"]]


def cv_run(tmp_path: Path, image_tree: Path, tiny_text_encoder: Path, name: str, *flags: str) -> Path:
    out = tmp_path / name
    code = train_clip.main(["--data-dir", str(image_tree), "--image-encoder", "starnet_s050",
                            "--text-encoder", f"hf:{tiny_text_encoder}", "--img-size", "24", "--epochs", "2",
                            "--batch-size", "8", "--num-workers", "0", "--use-cv", "--n-splits", "2",
                            "--augmentation", "none", "--output-dir", str(out),
                            "--log-file", str(tmp_path / f"{name}.log"), *flags])
    assert code == 0
    return out


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's whole model state: its own weights and the run's frozen towers it names."""
    return full_model_state(load_checkpoint(checkpoint), checkpoint)


def text_calls(out: Path) -> dict[int, list[int]]:
    """Per fold, the text-encoder calls since the fold began, after each epoch."""
    return {fold: [row["text_encoder_calls"]
                   for row in json.loads((out / f"fold_{fold}" / "history.json").read_text())]
            for fold in (1, 2)}


def test_frozen_text_tower_encodes_class_texts_once_per_fold(tmp_path, image_tree, tiny_text_encoder):
    frozen = cv_run(tmp_path, image_tree, tiny_text_encoder, "frozen", "--freeze-text")
    # Epoch 0 (zero-shot) and two training epochs: reset per fold, cached for training and evaluation.
    assert text_calls(frozen) == {1: [1, 1, 1], 2: [1, 1, 1]}
    summary = json.loads((frozen / "cv_summary.json").read_text())
    assert summary["n_splits"] == 2
    first, last = (model_state(frozen / f"fold_{k}" / "checkpoint_latest.pth") for k in (1, 2))
    text_keys = [k for k in first if k.startswith("text_encoder.")]
    assert text_keys and all(torch.equal(first[k], last[k]) for k in text_keys)


def test_frozen_image_backbone_stays_bit_identical(tmp_path, image_tree, tiny_text_encoder):
    torch.manual_seed(0)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    out = cv_run(tmp_path, image_tree, tiny_text_encoder, "frozen_image", "--freeze-image",
                 "--image-encoder", "resnet18:pretrained", "--image-weights", str(tmp_path / "resnet18.pth"))
    for fold in (1, 2):
        state = model_state(out / f"fold_{fold}" / "checkpoint_latest.pth")
        backbone = {k[len("image_encoder.backbone."):]: v for k, v in state.items()
                    if k.startswith("image_encoder.backbone.")}
        expected = {k: v for k, v in weights.items() if not k.startswith("fc.")}
        assert backbone.keys() == expected.keys()  # BatchNorm running statistics included
        for key, value in expected.items():
            assert torch.equal(backbone[key], value), key
        history = json.loads((out / f"fold_{fold}" / "history.json").read_text())
        assert all(math.isfinite(row["train_loss"]) for row in history[1:])  # trained, finite


@pytest.mark.parametrize("freeze_text", [True, False])
def test_only_a_frozen_text_tower_runs_once_and_without_gradients(tiny_text_encoder, freeze_text):
    model = build_clip_model("starnet_s050", f"hf:{tiny_text_encoder}", 16, 0.07, CLASS_TEXTS,
                             freeze_text=freeze_text)
    model.train()
    for _ in range(3):
        image_emb, class_emb, scale = model(torch.randn(2, 3, 24, 24))
        (image_emb @ class_emb.t() * scale).sum().backward()
    assert model.text_encoder_calls == (1 if freeze_text else 3)
    assert all((p.grad is None) == freeze_text for p in model.text_encoder.model.encoder.parameters())
    assert model.text_proj.weight.grad is not None  # the projection learns either way
    assert model.text_encoder.training != freeze_text  # frozen towers stay in eval mode (dropout, BatchNorm)


@pytest.mark.parametrize("freeze_image", [False, True])
def test_lr_multipliers_apply_to_the_towers_and_projections_keep_the_base_rate(tiny_text_encoder, freeze_image):
    cfg = TrainConfig(data_dir="unused", learning_rate=1e-3, image_lr_mult=0.1, text_lr_mult=0.5,
                      freeze_image=freeze_image)
    model = build_clip_model("starnet_s050", f"hf:{tiny_text_encoder}", 16, 0.07, CLASS_TEXTS,
                             freeze_image=freeze_image)
    lr_of = {id(p): group["lr"] for group in training.engine.parameter_groups(model, cfg) for p in group["params"]}
    for name, parameter in model.named_parameters():
        if name.startswith("image_encoder."):
            expected = None if freeze_image else pytest.approx(1e-4)
        elif name.startswith("text_encoder."):
            expected = pytest.approx(5e-4)
        else:  # image_proj, text_proj, logit_scale
            expected = pytest.approx(1e-3)
        assert lr_of.get(id(parameter)) == expected, name
