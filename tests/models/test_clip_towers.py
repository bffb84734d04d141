"""CLIP image towers and paired towers (open_clip and Chinese-CLIP), on tiny random models offline.

Paired towers keep their CLIP's projections and logit scale: epoch 0 scores exactly what the
library's own forward (open_clip's encode_image/encode_text, transformers' get_image_features/
get_text_features) scores on the same images and texts. Runs train end to end and predict.py
rebuilds them from the run folder alone.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import predict
import train_clip
from data.images import decode_image
from models.clip_model import build_clip_model
from models.clip_base import INPUT_MEAN, INPUT_STD
from models.image_encoders import resolve_image_encoder
from models.names import UnknownEncoderError
from models.text_encoders import build_text_encoder, resolve_text_encoder
from reporting.metrics import classification_metrics
from tests.clip_helpers import TINY_CLIP_NAME, cache_tiny_open_clip, make_tiny_chinese_clip
from tests.equivalence import PROBABILITY_TOLERANCE, assert_same_float64
from tests.weights_helpers import point_caches_at
from utils.errors import ConfigError
from utils.io import load_checkpoint

TEMPLATE = "一张{class_name}的照片"
IMG = 32  # the tiny models' image size (patch 16)
CONTINUOUS_METRICS = ("roc_auc", "ece")


@pytest.fixture
def tiny_open_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny open_clip model published as TINY_CLIP_REPO in a fresh HuggingFace cache."""
    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    return cache_tiny_open_clip(hub_cache, tmp_path / "tiny_clip_repo").eval()


@pytest.fixture
def tiny_cn_clip(tmp_path: Path) -> Path:
    return make_tiny_chinese_clip(tmp_path / "中文 clip")


def train(tmp_path: Path, data: Path, image_encoder: str, text_encoder: str, *flags: str) -> Path:
    out = tmp_path / "run"
    code = train_clip.main(["--data-dir", str(data), "--image-encoder", image_encoder, "--text-encoder", text_encoder,
                            "--text-template", TEMPLATE, "--img-size", str(IMG), "--epochs", "1",
                            "--batch-size", "8", "--learning-rate", "1e-3", "--warmup-epochs", "0",
                            "--augmentation", "none", "--num-workers", "0", "--output-dir", str(out),
                            "--log-file", str(tmp_path / "train.log"), *flags])
    assert code == 0
    return out


def clip_pixels(data: Path, relative_paths: list[str], mean, std) -> torch.Tensor:
    """The images as CLIP's own preprocessing gives them: decoded as the trainer does, scaled to
    [0, 1], normalised with the CLIP model's mean and std."""
    images = []
    for relative in relative_paths:
        x = decode_image(data / relative, IMG).float() / 255.0
        images.append(x.expand(3, -1, -1) if x.shape[0] == 1 else x)
    return (torch.stack(images) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def zero_shot_probs(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> np.ndarray:
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    return logits.softmax(dim=1).double().numpy()


def assert_epoch_zero_is_the_library_zero_shot(out: Path, data: Path, library_probs) -> None:
    """Per fold: the logged epoch-0 metrics equal those of the library's own zero-shot probabilities."""
    folds = json.loads((out / "folds.json").read_text(encoding="utf-8"))["folds"]
    checkpoint = load_checkpoint(out / "fold_1" / "checkpoint_latest.pth")
    names, texts = checkpoint["class_names"], [t[0] for t in checkpoint["class_texts"]]
    assert texts == [TEMPLATE.format(class_name=n) for n in names]
    for number, fold in enumerate(folds, start=1):
        epoch0 = json.loads((out / f"fold_{number}" / "history.json").read_text(encoding="utf-8"))[0]
        labels = np.array([names.index(path.split("/")[0]) for path in fold["val"]])
        expected = classification_metrics(labels, library_probs(fold["val"], texts))
        assert epoch0["epoch"] == 0
        assert epoch0["accuracy"] == expected["accuracy"]
        for key in CONTINUOUS_METRICS:  # functions of every probability, not only of the arg-max
            # Each moves by no more than the probabilities do (an ECE bin is an average of them).
            assert epoch0[key] == pytest.approx(expected[key], abs=PROBABILITY_TOLERANCE), key


def assert_predict_reproduces_fold_one(out: Path, data: Path, tmp_path: Path, *extra: str) -> None:
    """predict.py with fold 1's model gives the probabilities logged for fold 1's validation images."""
    output = tmp_path / "predictions.csv"
    assert predict.main(["--run-dir", str(out), "--images", str(data), "--output", str(output), "--fold", "1",
                         *extra]) == 0
    with output.open(encoding="utf-8", newline="") as handle:
        predicted = {row["path"]: row for row in csv.DictReader(handle)}
    with (out / "oof_predictions.csv").open(encoding="utf-8", newline="") as handle:
        logged = [row for row in csv.DictReader(handle) if row["fold"] == "1"]
    assert logged
    for row in logged:
        probs = [key for key in row if key.startswith("prob_")]
        np.testing.assert_allclose([float(predicted[row["path"]][k]) for k in probs],
                                   [float(row[k]) for k in probs], rtol=0, atol=PROBABILITY_TOLERANCE)


def test_paired_open_clip_starts_from_its_own_zero_shot_and_predicts_from_the_run(
        tmp_path, image_tree, tiny_open_clip):
    import open_clip

    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'tiny_clip_repo'}")
    visual = tiny_open_clip.visual

    @torch.no_grad()
    def library_probs(paths: list[str], texts: list[str]) -> np.ndarray:
        images = clip_pixels(image_tree, paths, visual.image_mean, visual.image_std)
        return zero_shot_probs(tiny_open_clip.encode_image(images), tiny_open_clip.encode_text(tokenizer(texts)),
                               tiny_open_clip.logit_scale)

    out = train(tmp_path, image_tree, TINY_CLIP_NAME, TINY_CLIP_NAME, "--use-cv", "--n-splits", "2")
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "its own image and text projections and logit scale are kept" in log
    assert "--embed-dim 512 is not used" in log  # the tiny CLIP embeds in 16 dimensions
    assert "saliency gallery" not in log  # drawn: CLIP towers have a heatmap layer
    assert_epoch_zero_is_the_library_zero_shot(out, image_tree, library_probs)
    state = load_checkpoint(out / "fold_1" / "checkpoint_latest.pth")["model"]
    assert not any(key.startswith(("image_proj.", "text_proj.")) for key in state)  # no new layers
    assert_predict_reproduces_fold_one(out, image_tree, tmp_path)


def test_paired_chinese_clip_starts_from_its_own_zero_shot_and_predicts_from_the_run(
        tmp_path, image_tree, tiny_cn_clip):
    from transformers import BertTokenizer, ChineseCLIPModel

    from models.chinese_clip import IMAGE_MEAN, IMAGE_STD

    clip = ChineseCLIPModel.from_pretrained(tiny_cn_clip).eval().double()
    tokenizer = BertTokenizer.from_pretrained(tiny_cn_clip)

    @torch.no_grad()
    def library_probs(paths: list[str], texts: list[str]) -> np.ndarray:
        images = clip_pixels(image_tree, paths, IMAGE_MEAN, IMAGE_STD)
        image_features = clip.get_image_features(pixel_values=images).pooler_output
        text_features = clip.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
        return zero_shot_probs(image_features, text_features, clip.logit_scale)

    name = f"cn-clip:{tiny_cn_clip}"
    out = train(tmp_path, image_tree, name, name, "--use-cv", "--n-splits", "2")
    assert_epoch_zero_is_the_library_zero_shot(out, image_tree, library_probs)
    shutil.rmtree(tiny_cn_clip)  # predict.py needs the run folder only: tokenizer and config are in it
    assert_predict_reproduces_fold_one(out, image_tree, tmp_path, "--explain", str(tmp_path / "heatmaps"))
    assert len(list((tmp_path / "heatmaps").rglob("*.png"))) == 24  # a heatmap per image


def test_unpaired_clip_towers_get_new_projections_and_predict_from_the_run(
        tmp_path, image_tree, tiny_open_clip, tiny_cn_clip):
    out = train(tmp_path, image_tree, f"cn-clip:{tiny_cn_clip}", TINY_CLIP_NAME, "--embed-dim", "8")
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert (f"Projections: image: cn-clip:{tiny_cn_clip}'s own projection, then a new 16->8 projection; "
            f"text: {TINY_CLIP_NAME}'s own projection, then a new 16->8 projection") in log
    checkpoint = load_checkpoint(out / "fold_1" / "checkpoint_best.pth")
    assert checkpoint["model"]["image_proj.weight"].shape == (8, 16)
    assert "config.json" in checkpoint["image_encoder_files"]  # the Chinese-CLIP image tower's architecture
    shutil.rmtree(tiny_cn_clip)
    assert_predict_reproduces_fold_one(out, image_tree, tmp_path)


def test_a_pair_is_one_model_in_memory_and_other_combinations_are_not_pairs(tmp_path, tiny_open_clip, tiny_cn_clip):
    from transformers import ChineseCLIPModel

    texts = [["a"], ["b"]]
    paired = build_clip_model(TINY_CLIP_NAME, TINY_CLIP_NAME, 512, 0.07, texts, img_size=IMG)
    count = sum(p.numel() for p in paired.parameters())
    # The whole open_clip model once, plus the classifier's own logit scale.
    assert count == sum(p.numel() for p in tiny_open_clip.parameters()) + 1
    assert paired.paired and paired.text_encoder.clip.visual is None
    assert paired.logit_scale.item() == pytest.approx(tiny_open_clip.logit_scale.item())

    cn_name = f"cn-clip:{tiny_cn_clip}"
    cn_pair = build_clip_model(cn_name, cn_name, 512, 0.07, texts, img_size=IMG)
    reference = ChineseCLIPModel.from_pretrained(tiny_cn_clip)
    assert sum(p.numel() for p in cn_pair.parameters()) == sum(p.numel() for p in reference.parameters())
    assert cn_pair.logit_scale.item() == pytest.approx(4.0)  # the saved model's, not 1/temperature

    for image, text in [(TINY_CLIP_NAME, f"{TINY_CLIP_NAME}:scratch"), (cn_name, TINY_CLIP_NAME)]:
        model = build_clip_model(image, text, 8, 0.07, texts, img_size=IMG)
        assert not model.paired and model.image_proj.weight.shape == (8, 16)
        assert model.logit_scale.item() == pytest.approx(np.log(1 / 0.07))


def test_input_statistics_are_the_ones_the_data_pipeline_normalises_with():
    from data.transforms import IMAGENET_MEAN, IMAGENET_STD

    assert (INPUT_MEAN, INPUT_STD) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("family", ["open_clip", "chinese_clip"])
def test_paired_embeddings_are_the_library_features_of_clip_normalised_pixels(family, tmp_path, tiny_open_clip,
                                                                              tiny_cn_clip):
    """The trainer's ImageNet-normalised input gives the embedding the library gives CLIP's own input
    (both in float64: the two normalisations round differently in float32)."""
    from data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToModelInput

    texts = ["股骨柄 a", "xy photo"]
    if family == "open_clip":
        import open_clip

        tiny_open_clip.double()
        name, mean, std = TINY_CLIP_NAME, tiny_open_clip.visual.image_mean, tiny_open_clip.visual.image_std
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'tiny_clip_repo'}")
        image_features, text_features = tiny_open_clip.encode_image, lambda t: tiny_open_clip.encode_text(tokenizer(t))
    else:
        from transformers import BertTokenizer, ChineseCLIPModel

        from models.chinese_clip import IMAGE_MEAN as mean, IMAGE_STD as std

        name, clip = f"cn-clip:{tiny_cn_clip}", ChineseCLIPModel.from_pretrained(tiny_cn_clip).eval().double()
        tokenizer = BertTokenizer.from_pretrained(tiny_cn_clip)
        image_features = lambda x: clip.get_image_features(pixel_values=x).pooler_output  # noqa: E731
        text_features = lambda t: clip.get_text_features(  # noqa: E731
            **tokenizer(t, padding=True, return_tensors="pt")).pooler_output
    model = build_clip_model(name, name, 16, 0.07, [[t] for t in texts], img_size=IMG).eval().double()
    pixels = torch.randint(0, 256, (2, 3, IMG, IMG), dtype=torch.uint8)
    clip_input = ((pixels.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
                  / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1))
    # The trainer's input, ToModelInput's ImageNet normalisation, computed in float64 (its own float32
    # rounding would reach the embeddings; ToModelInput is tested in tests/data/test_transforms.py).
    trainer_input = ((pixels.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1))
                     / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1))
    torch.testing.assert_close(trainer_input.float(), torch.stack([ToModelInput()(p) for p in pixels]))
    with torch.no_grad():
        ours = model.encode_images(trainer_input)
        classes = model.encode_classes()
        theirs, their_texts = F.normalize(image_features(clip_input), dim=-1), F.normalize(text_features(texts), dim=-1)
    assert_same_float64(ours, theirs, 4 * 32)  # the tiny towers are 32 wide
    assert_same_float64(classes, their_texts, 4 * 32)


def test_fixed_size_clip_towers_refuse_another_img_size(tiny_open_clip):
    with pytest.raises(ConfigError, match=r"--img-size 64: --image-encoder clip:hf-hub:someone/tiny-clip was built "
                                          r"for 32-pixel images.*use --img-size 32"):
        build_clip_model(TINY_CLIP_NAME, "all-MiniLM-L6-v2", 8, 0.07, [["a"]], img_size=64)


def test_chinese_clip_names_resolve_without_loading_and_rn50_says_what_to_use():
    assert resolve_text_encoder("cn-clip:ViT-B/16").model == "OFA-Sys/chinese-clip-vit-base-patch16"
    spec, pretrained = resolve_image_encoder("cn-clip:ViT-L/14")  # what study/validate.py calls
    assert (spec.family, spec.arch, pretrained) == ("Chinese-CLIP", "OFA-Sys/chinese-clip-vit-large-patch14", True)
    assert resolve_image_encoder("clip:ViT-B/32:scratch")[1] is False
    assert resolve_image_encoder("clip:ViT-B/32")[0].family == "OpenCLIP"
    for resolve, flag in [(resolve_text_encoder, "--text-encoder"), (resolve_image_encoder, "--image-encoder")]:
        with pytest.raises(UnknownEncoderError, match=rf"{flag} cn-clip:RN50: .*only for the cn_clip package.*"
                                                      r"use cn-clip:ViT-B/16"):
            resolve("cn-clip:RN50")
    with pytest.raises(UnknownEncoderError, match=r"did you mean 'cn-clip:ViT-B/16'"):
        resolve_text_encoder("cn-clip:ViT-B-16")


def test_chinese_clip_text_tower_reports_tokens_and_unknown_characters(tiny_cn_clip):
    encoder = build_text_encoder(f"cn-clip:{tiny_cn_clip}")
    assert encoder.context_length == 64  # the tiny model's position embeddings
    report = encoder.token_report("股骨柄 xy 猫")  # 猫 is not in the vocabulary
    assert (report.n_tokens, report.n_unknown, report.n_content) == (8, 1, 6)  # [CLS] 股 骨 柄 x ##y [UNK] [SEP]
    long = encoder.tokenize(["股" * 200])["input_ids"]
    assert long.shape[1] == 64


def test_list_encoders_shows_clip_image_towers_and_pairs(capsys, monkeypatch):
    from models import open_clip_towers, registry_table

    # Two open_clip models keep the test fast (each is built on the meta device to count it).
    monkeypatch.setattr(registry_table, "CLIP_ALIASES",
                        {a: open_clip_towers.CLIP_ALIASES[a] for a in ("ViT-B/32", "RN50")})
    monkeypatch.setattr(registry_table, "IMAGE_ENCODERS", {})
    assert train_clip.main(["--list-encoders"]) == 0
    out = capsys.readouterr().out
    image_section = out[out.index("CLIP image towers"):out.index("Text encoders")]
    for name in ("clip:ViT-B/32", "clip:RN50", "cn-clip:ViT-B/16", "cn-clip:ViT-L/14"):
        assert f"\n{name} " in image_section and f"\n{name} " in out[out.index("Text encoders"):]
    assert "87.8M" in image_section  # ViT-B/32's vision tower with its projection
    assert "pairs: the same NAME" in image_section


def test_download_of_a_chinese_clip_name_serves_both_towers_offline(tmp_path, monkeypatch, capsys, tiny_cn_clip):
    from models import download
    from models.image_encoders import build_image_encoder
    from tests.weights_helpers import put_in_hf_cache

    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert download.main(["cn-clip:RN50"]) == 2  # refused before anything is fetched, with the reason
    assert "only for the cn_clip package" in capsys.readouterr().err
    # What a download leaves in the cache (the hub is out of reach here).
    snapshot = put_in_hf_cache(hub_cache, "OFA-Sys/chinese-clip-vit-base-patch16",
                               {f.name: f for f in tiny_cn_clip.iterdir()})
    assert download.main(["cn-clip:ViT-B/16"]) == 0
    assert f"cn-clip:ViT-B/16: {snapshot / 'model.safetensors'}" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = build_image_encoder("cn-clip:ViT-B/16", img_size=IMG)  # the image side reads the same cache
    assert encoder.feature_dim == 16 and encoder.name == "cn-clip:ViT-B/16"


def test_a_chinese_clip_text_tower_is_rebuilt_from_the_files_a_checkpoint_keeps(tmp_path, tiny_cn_clip):
    texts = [["股骨柄"], ["关节 xy"]]
    trained = build_clip_model("starnet_s050", f"cn-clip:{tiny_cn_clip}", 8, 0.07, texts).eval()
    files, state = trained.text_encoder.saved_files(), trained.state_dict()
    assert {"config.json", "tokenizer_config.json"} <= set(files)
    shutil.rmtree(tiny_cn_clip)  # as on a machine that only got the run folder
    restored = build_clip_model("starnet_s050", f"cn-clip:{tiny_cn_clip}", 8, 0.07, texts, load_pretrained=False,
                                text_files=files).eval()
    restored.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(restored.encode_classes(), trained.encode_classes())


@pytest.mark.parametrize("family", ["open_clip", "chinese_clip"])
def test_clip_image_towers_get_heatmaps_from_their_last_blocks_patch_tokens(family, tiny_open_clip, tiny_cn_clip):
    from reporting.saliency import ClassLogits, class_heatmaps, target_layer

    name = TINY_CLIP_NAME if family == "open_clip" else f"cn-clip:{tiny_cn_clip}"
    model = build_clip_model(name, name, 8, 0.07, [["a"], ["b"]], img_size=IMG)
    tower = model.image_encoder.backbone.tower
    expected = (tower.transformer.resblocks[-1].ln_1 if family == "open_clip"
                else tower.vision_model.encoder.layers[-1].layer_norm1)
    layer = target_layer(model, IMG)
    assert layer.module is expected
    torch.manual_seed(0)
    images = torch.randn(2, 3, IMG, IMG)
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # class token + a 2x2 grid
    assert layer.reshape(tokens).shape == (2, 3, 2, 2)
    heatmaps = class_heatmaps(ClassLogits.of(model), images, [0, 1])
    assert heatmaps.shape == (2, IMG, IMG) and np.isfinite(heatmaps).all() and heatmaps.std() > 0
