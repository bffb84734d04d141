"""Issue 12: the methods paragraph states what the run did, and changes when the run does."""
from __future__ import annotations

import re

import numpy as np
import pytest

from reporting.phrases import Phrases
from reporting.methods import methods_paragraph, methods_section, run_environment
from reporting.metrics import classification_metrics
from reporting.run_summary import RunSummary
from tests.helpers import run_summary
from training.config import TrainConfig

CLASSES = ["stem_a", "stem_b", "stem_c"]


def config(**changes) -> dict:
    return TrainConfig(data_dir="data", **changes).to_dict()


def folds(n_folds: int, test: int = 0) -> dict:
    return {"test": [f"t{i}.png" for i in range(test)],
            "folds": [{"fold": k + 1, "train": [], "val": []} for k in range(n_folds)]}


def summary(class_names=CLASSES, test: bool = False, **keys) -> RunSummary:
    y = np.repeat(np.arange(len(class_names)), [5, 7, 9][:len(class_names)])
    probs = np.eye(len(class_names))[y] * 0.7 + 0.1
    if test:
        keys["test"] = classification_metrics(np.array([0, 1, 2]), np.eye(3) * 0.7 + 0.1)
    return run_summary(class_names=list(class_names), oof=classification_metrics(y, probs), **keys)


def test_the_data_and_split_are_those_of_the_run():
    text = methods_paragraph(config(use_cv=True, n_splits=5, random_state=7), folds(5), summary())
    assert "21 images in 3 classes: stem_a (5), stem_b (7), stem_c (9)" in text
    assert "stratified 5-fold cross-validation" in text and "seed 7" in text and "test set" not in text
    text = methods_paragraph(config(use_cv=True, n_splits=3, test_fraction=0.125), folds(3, test=3),
                             summary(test=True))
    assert "24 images" in text and "stem_a (6)" in text  # the test set's images counted too
    assert "stratified 3-fold" in text and "12.5% of the images (3) was held out as a test set" in text
    assert "remaining 21 images" in text and "averaging their class probabilities" in text
    holdout = methods_paragraph(config(val_fraction=0.25), folds(1), summary())
    assert "split once" in holdout and "25% for validation" in holdout and "fold cross-validation" not in holdout


def test_encoders_and_their_initialisation():
    text = methods_paragraph(config(image_encoder="resnet50:pretrained", text_encoder="bert-base-chinese:scratch",
                                    freeze_image=True, img_size=384), folds(5), summary())
    assert "image encoder resnet50 (initialised with pretrained ImageNet weights, kept frozen" in text
    assert "text encoder bert-base-chinese (randomly initialised)" in text and "384×384 pixels" in text
    text = methods_paragraph(config(image_encoder="starnet_s050", text_encoder="clip:ViT-B/32"), folds(5), summary())
    assert "image encoder starnet_s050 (randomly initialised)" in text
    assert "text encoder clip:ViT-B/32 (initialised with pretrained OpenCLIP weights)" in text


@pytest.mark.parametrize("text_encoder, start, chinese", [
    ("clip:ViT-B/32", "initialised with pretrained OpenCLIP weights", "OpenCLIP 预训练权重"),
    ("clip:ViT-B/32:scratch", "randomly initialised", "随机初始化"),
    ("cn-clip:ViT-B/16", "initialised with pretrained Chinese-CLIP weights", "Chinese-CLIP 预训练权重"),
    ("siglip:MedSigLIP-448", "initialised with pretrained SigLIP weights", "SigLIP 预训练权重"),
    ("siglip:/models/medsiglip:scratch", "randomly initialised", "随机初始化"),
    ("bert-base-chinese", "with its pretrained weights", "预训练权重"),
    ("bert-base-chinese:scratch", "randomly initialised", "随机初始化"),
    ("hf:org/some-bert", "with its pretrained weights", "预训练权重"),
])
def test_every_text_encoder_family_says_how_it_was_initialised(text_encoder, start, chinese):
    """On the text side every family is pretrained unless :scratch."""
    cfg = config(image_encoder="resnet18", text_encoder=text_encoder)
    base = text_encoder.removesuffix(":scratch")
    assert f"text encoder {base} ({start})" in methods_paragraph(cfg, folds(5), summary())
    assert f"文本编码器 {base}（{chinese}）" in methods_paragraph(cfg, folds(5), summary(["股骨柄A", "股骨柄B"]),
                                                              Phrases("zh"))


def test_a_weights_file_is_named_as_the_start():
    cfg = config(image_encoder="resnet18", image_weights="/data/weights/radimagenet_r18.pth",
                 text_encoder="bert-base-chinese", text_weights="/models/my-bert")
    text = methods_paragraph(cfg, folds(5), summary())
    assert "image encoder resnet18 (initialised from the weights in radimagenet_r18.pth)" in text
    assert "text encoder bert-base-chinese (initialised from the weights in my-bert)" in text


@pytest.mark.parametrize("image_encoder, start, chinese", [
    ("clip:ViT-B/32", "initialised with pretrained OpenCLIP weights", "OpenCLIP 预训练权重"),
    ("clip:ViT-B/32:scratch", "randomly initialised", "随机初始化"),
    ("cn-clip:ViT-B/16", "initialised with pretrained Chinese-CLIP weights", "Chinese-CLIP 预训练权重"),
    ("siglip:MedSigLIP-448", "initialised with pretrained SigLIP weights", "SigLIP 预训练权重"),
    ("siglip:/models/medsiglip:scratch", "randomly initialised", "随机初始化"),
    ("resnet18", "randomly initialised", "随机初始化"),
    ("resnet18:pretrained", "initialised with pretrained ImageNet weights", "ImageNet 预训练权重"),
    ("timm:convnext_atto", "randomly initialised", "随机初始化"),
    ("timm:convnext_atto:pretrained", "initialised with pretrained ImageNet weights", "ImageNet 预训练权重"),
    ("starnet_s050", "randomly initialised", "随机初始化"),
])
def test_every_image_encoder_family_says_how_it_was_initialised(image_encoder, start, chinese):
    """A CLIP tower is pretrained unless :scratch; a registry backbone only with :pretrained."""
    cfg = config(image_encoder=image_encoder, text_encoder="bert-base-chinese")
    text = methods_paragraph(cfg, folds(5), summary())
    base = image_encoder.removesuffix(":scratch").removesuffix(":pretrained")
    assert f"image encoder {base} ({start})" in text
    assert f"图像编码器 {base}（{chinese}）" in methods_paragraph(cfg, folds(5), summary(["股骨柄A", "股骨柄B"]),
                                                              Phrases("zh"))


def test_sampling_optimiser_schedule_and_selection_follow_the_config():
    weighted = methods_paragraph(config(use_weighted_sampling=True, weight_method="inverse_sqrt",
                                        weight_smooth_factor=0.5), folds(5), summary())
    assert "class-balancing weights 1/sqrt(n_c) (inverse_sqrt, raised to the power 0.5)" in weighted
    plain = methods_paragraph(config(), folds(5), summary())
    assert "no class re-weighting" in plain and "class-balancing" not in plain
    assert "AdamW (learning rate 0.0001; weight decay 0.01" in plain and "early" not in plain
    tuned = methods_paragraph(config(learning_rate=3e-5, image_lr_mult=0.1, epochs=40, warmup_epochs=2, patience=6,
                                     monitor="roc_auc", augmentation="minimal"), folds(5), summary())
    assert "learning rate 3e-05, multiplied for the image backbone ×0.1" in tuned
    assert "warm-up over 2 epoch(s) followed by cosine decay, for up to 40 epochs" in tuned
    assert "after 6 epochs without improvement" in tuned and "best inner-validation roc_auc" in tuned
    assert "epoch 0, the untrained zero-shot model, competed" in tuned and "which also decided early" in tuned
    assert "small random affine jitter" in tuned and "horizontal flips" not in tuned


def test_the_selection_protocol_is_stated_for_each_select_on():
    inner = methods_paragraph(config(inner_val_fraction=0.2), folds(5), summary())
    assert "inner validation part (at least 20%" in inner and "never used to choose anything" in inner
    assert "optimistic" not in inner
    last = methods_paragraph(config(select_on="last"), folds(5), summary())
    assert "the one after the last epoch" in last and "inner" not in last
    fold = methods_paragraph(config(select_on="fold", monitor="roc_auc"), folds(5), summary())
    assert "best validation roc_auc, chosen on the same images that are scored" in fold and "optimistic" in fold
    calibrated = methods_paragraph(config(calibrate="temperature"), folds(5), summary())
    assert "temperature scaling" in calibrated and "on its inner validation split" in calibrated


def test_software_and_intervals_are_stated_when_recorded():
    recorded = summary(environment=run_environment("cpu", None),
                       ci_settings={"method": "BCa", "n_resamples": 500, "resampled_unit": "image", "seed": 3})
    text = methods_paragraph(config(), folds(5), recorded)
    versions = recorded.environment["versions"]
    assert f"Python {versions['python']}" in text and f"torch {versions['torch']}" in text
    assert "trained on cpu in full precision" in text
    assert "BCa bootstrap intervals (500 resamples of images, seed 3)" in text
    assert "Software" not in methods_paragraph(config(), folds(5), summary())


def test_the_chinese_methods_section_is_the_whole_paragraph_in_chinese():
    """Not a summary: every sentence of the English paragraph has its Chinese one, with the same facts."""
    cfg = config(use_cv=True, use_weighted_sampling=True, calibrate="temperature", patience=4, image_lr_mult=0.1)
    run = summary(["股骨柄A", "股骨柄B", "股骨柄C"])
    english = methods_section(cfg, folds(5), run)
    assert english[0] == "## Methods" and len(english) == 3 and not re.search(r"[\u4e00-\u9fff]{4}", english[2])
    chinese = methods_section(cfg, folds(5), run, Phrases("zh"))
    assert chinese[0] == "## 方法" and len(chinese) == 3
    paragraph = chinese[2]
    assert "股骨柄B（7）" in paragraph and "分层 5 折交叉验证" in paragraph and "温度缩放" in paragraph
    english_sentences = re.findall(r"(?<! al)\.(?= |$)", english[2])  # "Guo et al. 2017" ends none
    assert paragraph.count("。") == len(english_sentences)  # one Chinese sentence per English one
    numbers = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")
    assert sorted(numbers.findall(paragraph)) == sorted(numbers.findall(english[2]))
    assert not re.search(r"\b(the|was|were|with|and)\b", paragraph)  # no English sentence left in it

