"""A tiny SigLIP pair (``siglip:<folder>`` on both sides) trains end to end: epoch 0 of every fold is
transformers' own SigLIP zero-shot, predict.py rebuilds the models from the run folder alone (the
model's folder deleted), and LP-FT's first phase moves only SigLIP's two heads and the logit scale."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import train_clip
from models.clip_model import build_clip_model
from models.siglip import ImageInput, processor_from_files
from tests.clip_helpers import make_tiny_siglip
from tests.e2e.test_finetuning import interrupt_after_fold_1_epoch_1
from tests.models.test_clip_towers import (TEMPLATE, assert_epoch_zero_is_the_library_zero_shot,
                                           assert_predict_reproduces_fold_one, clip_pixels, train)
from training.checkpoints import full_model_state
from utils.io import load_checkpoint
from utils.run_dir import RunDir

pytestmark = [pytest.mark.slow]
# SigLIP's heads: the tower's attention-pooling head and the text head (models/siglip.py).
HEADS = ("image_encoder.backbone.tower.projection.", "text_encoder.projection.")


@pytest.fixture
def tiny_siglip(tmp_path: Path) -> Path:
    return make_tiny_siglip(tmp_path / "siglip 模型")


def test_a_siglip_pair_starts_from_its_zero_shot_trains_and_predicts_from_the_run(tmp_path, image_tree, tiny_siglip):
    from transformers import BertTokenizer, SiglipModel

    siglip = SiglipModel.from_pretrained(tiny_siglip).eval().double()
    tokenizer = BertTokenizer.from_pretrained(tiny_siglip)
    name = f"siglip:{tiny_siglip}"
    out = train(tmp_path, image_tree, name, name, "--use-cv", "--n-splits", "2")
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "its own image and text projections and logit scale and bias are kept" in log
    checkpoint = load_checkpoint(out / "fold_1" / "checkpoint_latest.pth")
    expected = ImageInput.of(processor_from_files(checkpoint["text_encoder_files"]))

    @torch.no_grad()
    def library_probs(paths: list[str], texts: list[str]) -> np.ndarray:
        tokens = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
        images = clip_pixels(image_tree, paths, expected.mean, expected.std).double()
        logits = siglip(input_ids=tokens["input_ids"], pixel_values=images).logits_per_image
        return logits.softmax(dim=1).numpy()

    assert_epoch_zero_is_the_library_zero_shot(out, image_tree, library_probs)
    history = json.loads((out / "fold_1" / "history.json").read_text(encoding="utf-8"))
    assert len(history) == 2 and np.isfinite(history[1]["train_loss"])  # trained one epoch
    assert checkpoint["model"]["logit_bias"].item() == pytest.approx(-3.0)  # the tiny SigLIP's own
    shutil.rmtree(tiny_siglip)  # predict.py needs the run folder only: tokenizer, configs are in it
    assert_predict_reproduces_fold_one(out, image_tree, tmp_path, "--explain", str(tmp_path / "heatmaps"))
    assert len(list((tmp_path / "heatmaps").rglob("*.png"))) == 24  # a heatmap per image


def test_lp_ft_first_phase_moves_only_siglips_heads_and_scale(tmp_path, image_tree, tiny_siglip, monkeypatch):
    name = f"siglip:{tiny_siglip}"
    run = tmp_path / "lp"
    with monkeypatch.context() as patch:
        interrupt_after_fold_1_epoch_1(patch)
        assert train_clip.main(["--data-dir", str(image_tree), "--image-encoder", name, "--text-encoder", name,
                                "--text-template", TEMPLATE, "--img-size", "32", "--epochs", "2", "--lp-epochs", "1",
                                "--batch-size", "8", "--learning-rate", "1e-3", "--warmup-epochs", "0",
                                "--augmentation", "none", "--num-workers", "0", "--output-dir", str(run),
                                "--log-file", str(tmp_path / "lp.log")]) == 130
    path = RunDir(run).latest_checkpoint(1)
    after_phase = full_model_state(load_checkpoint(path), path)
    texts = [[TEMPLATE.format(class_name=folder.name)] for folder in sorted(image_tree.iterdir())]
    zero_shot = build_clip_model(name, name, 512, 0.07, texts, img_size=32).state_dict()
    changed = {key for key, value in zero_shot.items() if not torch.equal(after_phase[key], value)}
    assert "logit_scale" in changed and all(any(key.startswith(head) for key in changed) for head in HEADS)
    assert changed - {"logit_scale"} == {key for key in changed if key.startswith(HEADS)}
