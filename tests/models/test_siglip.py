"""SigLIP towers (``siglip:``) on a tiny random SiglipModel saved offline: epoch 0 is transformers' own
zero-shot (float64), SigLIP's tokenisation and input, offline resolution that fails naming the name,
the --list-encoders rows and the files a checkpoint keeps."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import train_clip
from models.clip_model import MAX_LOGIT_SCALE, build_clip_model
from models.image_encoders import build_image_encoder, resolve_image_encoder
from models import siglip
from models.names import WeightsNotFoundError
from models.text_encoders import build_text_encoder, resolve_text_encoder
from tests.clip_helpers import SIGLIP_MEAN, SIGLIP_STD, make_tiny_siglip, use_sentencepiece_tokenizer
from tests.equivalence import FLOAT32_EPS, assert_same_float64
from tests.weights_helpers import point_caches_at, put_in_hf_cache
from utils.errors import ConfigError

IMG = 32  # the tiny model's image size (patch 16: a 2x2 grid of patch tokens)
SCALE, BIAS = 5.0, -2.5  # exp(5) = 148: above CLIP's cap of 100, so a capped scale would show
TEXTS = ["股骨柄 a", "xy photo", "a longer description of the third class"]
MEDSIGLIP = siglip.PREFIX + "MedSigLIP-448"


@pytest.fixture
def tiny_siglip(tmp_path: Path) -> Path:
    return make_tiny_siglip(tmp_path / "tiny siglip", logit_scale=SCALE, logit_bias=BIAS)


def pixels_both_ways(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images as the trainer feeds them (ImageNet-normalised) and as SigLIP's processor config
    normalises them, both in float64."""
    from data.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (n, 3, IMG, IMG), dtype=torch.uint8).double() / 255

    def normalised(mean, std) -> torch.Tensor:
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)  # noqa: E731
        return (pixels - as_tensor(mean)) / as_tensor(std)

    return normalised(IMAGENET_MEAN, IMAGENET_STD), normalised(SIGLIP_MEAN, SIGLIP_STD)


def test_a_pair_starts_as_transformers_own_siglip_zero_shot(tiny_siglip):
    from transformers import BertTokenizer, SiglipModel

    name = f"siglip:{tiny_siglip}"
    model = build_clip_model(name, name, 512, 0.07, [[t] for t in TEXTS], img_size=IMG).eval().double()
    siglip = SiglipModel.from_pretrained(tiny_siglip).eval().double()
    # SigLIP's own tokenisation: padded to its 64-token context, no attention mask (as transformers' docs say).
    tokens = BertTokenizer.from_pretrained(tiny_siglip)(TEXTS, padding="max_length", max_length=64,
                                                        truncation=True, return_tensors="pt")
    assert set(model._tokens) == {"input_ids"} and torch.equal(model._tokens["input_ids"], tokens["input_ids"])
    trainer_input, siglip_input = pixels_both_ways(4)
    with torch.no_grad():
        theirs = siglip(input_ids=tokens["input_ids"], pixel_values=siglip_input).logits_per_image
        image_emb, class_emb, scale = model(trainer_input)
        ours = scale * image_emb @ class_emb.t() + model.logit_bias  # SigLIP's logits, in float64
        # What the trainer scores: the softmax over the classes of CLIPClassifier.logits (float32).
        probs = model.logits(image_emb, class_emb, scale).softmax(dim=1).double()
    assert scale.item() == pytest.approx(math.exp(SCALE)) and SCALE > MAX_LOGIT_SCALE  # not capped
    assert model.logit_bias.item() == BIAS and not model.logit_bias.requires_grad
    assert_same_float64(ours, theirs, 4 * 32)  # the tiny towers are 32 wide
    # The bias is one constant for every class: the softmax drops it, the ranking is the sigmoid's.
    # float32 logits of |cos| <= 1 times the scale: a few ulps of the scale each.
    tolerance = 0.5 * math.exp(SCALE) * 100 * FLOAT32_EPS
    torch.testing.assert_close(probs, theirs.softmax(dim=1), rtol=0, atol=tolerance)
    assert torch.equal(probs.argmax(dim=1), theirs.sigmoid().argmax(dim=1))


def test_a_pair_is_one_siglip_in_memory_and_its_heads_are_the_towers_projections(tiny_siglip, tiny_text_encoder):
    from transformers import SiglipModel

    name = f"siglip:{tiny_siglip}"
    model = build_clip_model(name, name, 512, 0.07, [["a"], ["b"]], img_size=IMG)
    reference = SiglipModel.from_pretrained(tiny_siglip)
    # The whole SigLIP once; its logit bias is a buffer of the classifier (no gradient reaches it).
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) - 1
    assert model.paired and not any(key.startswith(("image_proj.", "text_proj.")) for key in model.state_dict())
    tower = model.image_encoder.backbone.tower
    assert torch.equal(tower.projection.probe, reference.vision_model.head.probe)
    assert torch.equal(model.text_encoder.projection.weight, reference.text_model.head.weight)
    unpaired = build_clip_model(name, f"hf:{tiny_text_encoder}", 8, 0.07, [["a"], ["b"]], img_size=IMG)
    assert not unpaired.paired and unpaired.image_proj.weight.shape == (8, 32)
    assert not hasattr(unpaired, "logit_bias") and unpaired.max_logit_scale == MAX_LOGIT_SCALE


def test_the_image_tower_feeds_siglip_its_processor_configs_input(tiny_siglip):
    from transformers import SiglipModel

    encoder = build_image_encoder(f"siglip:{tiny_siglip}:pretrained", img_size=IMG).eval().double()
    siglip = SiglipModel.from_pretrained(tiny_siglip).eval().double()
    trainer_input, siglip_input = pixels_both_ways(2)
    with torch.no_grad():
        assert_same_float64(encoder(trainer_input), siglip.get_image_features(pixel_values=siglip_input).pooler_output,
                            4 * 32)
    assert {"config.json", "preprocessor_config.json"} <= set(encoder.saved_files())
    with pytest.raises(ConfigError, match=r"--img-size 64: --image-encoder siglip:.* was built for 32-pixel images "
                                          r"\(its preprocessor_config.json\); use --img-size 32"):
        build_image_encoder(f"siglip:{tiny_siglip}", img_size=64)


def test_the_text_tower_pads_to_its_context_and_reports_tokens(tiny_siglip):
    encoder = build_text_encoder(f"siglip:{tiny_siglip}")
    assert encoder.context_length == 64  # the tiny model's position embeddings
    assert encoder.tokenize(["x", "股" * 200])["input_ids"].shape == (2, 64)
    report = encoder.token_report("股骨柄 xy 猫")  # 猫 is not in the vocabulary
    assert (report.n_tokens, report.n_unknown, report.n_content) == (8, 1, 6)


def test_checkpoint_files_rebuild_both_towers_without_the_folder(tiny_siglip, tiny_text_encoder):
    name = f"siglip:{tiny_siglip}"
    texts = [["股骨柄"], ["关节 xy"]]
    for image, text in [(name, name), (name, f"hf:{tiny_text_encoder}"), ("starnet_s050", name)]:
        trained = build_clip_model(image, text, 8, 0.07, texts, img_size=IMG).eval()
        text_files, image_files, state = (trained.text_encoder.saved_files(), trained.image_encoder.saved_files(),
                                          trained.state_dict())
        copy = tiny_siglip.with_name("moved away")
        shutil.move(tiny_siglip, copy)  # as on a machine that only got the run folder
        restored = build_clip_model(image, text, 8, 0.07, texts, load_pretrained=False, img_size=IMG,
                                    text_files=text_files, image_files=image_files).eval()
        restored.load_state_dict(state)
        shutil.move(copy, tiny_siglip)
        images = torch.randn(2, 3, IMG, IMG)
        with torch.no_grad():
            torch.testing.assert_close(restored(images), trained(images))
        assert restored.max_logit_scale == trained.max_logit_scale


def test_hub_names_resolve_offline_from_the_cache_or_fail_naming_the_name(tmp_path, monkeypatch, tiny_siglip):
    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    assert resolve_text_encoder(MEDSIGLIP).model == "google/medsiglip-448"
    with pytest.raises(WeightsNotFoundError, match=rf"--text-encoder {MEDSIGLIP}: pretrained weights not found; "
                                                   r"looked in: .*google/medsiglip-448.*python -m models.download "
                                                   rf"{MEDSIGLIP}"):
        build_clip_model(MEDSIGLIP, MEDSIGLIP, 8, 0.07, [["a"]], img_size=IMG)
    put_in_hf_cache(hub_cache, "google/medsiglip-448", {f.name: f for f in tiny_siglip.iterdir()})
    model = build_clip_model(MEDSIGLIP, MEDSIGLIP, 8, 0.07, [["a"], ["b"]], img_size=IMG)
    assert model.paired and model.logit_scale.item() == pytest.approx(SCALE)
    spec, pretrained = resolve_image_encoder(MEDSIGLIP)  # what study/validate.py calls
    assert (spec.family, spec.arch, pretrained) == ("SigLIP", "google/medsiglip-448", True)


def test_a_weights_file_is_refused_for_a_siglip_tower(tiny_siglip):
    with pytest.raises(ConfigError, match=r"--image-weights .*: siglip:.* needs a SigLIP model folder"):
        build_image_encoder(f"siglip:{tiny_siglip}", img_size=IMG, weights=str(tiny_siglip / "model.safetensors"))


def test_list_encoders_shows_siglip_towers_and_their_cached_sizes(tmp_path, capsys, monkeypatch, tiny_siglip):
    from models import open_clip_towers, registry_table

    monkeypatch.setattr(registry_table, "CLIP_ALIASES", {"RN50": open_clip_towers.CLIP_ALIASES["RN50"]})
    monkeypatch.setattr(registry_table, "IMAGE_ENCODERS", {})
    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    put_in_hf_cache(hub_cache, "google/medsiglip-448", {f.name: f for f in tiny_siglip.iterdir()})
    assert train_clip.main(["--list-encoders"]) == 0
    out = capsys.readouterr().out
    image_section, text_section = out[out.index("CLIP image towers"):out.index("Text encoders")], out[
        out.index("Text encoders"):]
    for section in (image_section, text_section):
        row = next(line for line in section.splitlines() if line.startswith(f"{MEDSIGLIP} "))
        assert row.split()[1:] == ["SigLIP", "0.0M", "32", "yes"]  # counted from the cached config
        row = next(line for line in section.splitlines() if line.startswith("siglip:ViT-B/16 "))
        assert row.split()[1:] == ["SigLIP", "?", "?", "not", "cached"]
    assert "siglip:<hub name or folder>" in image_section


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_a_sentencepiece_tokenizer_without_its_package_is_one_line_naming_it(tmp_path):
    folder = tmp_path / "google-like"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    (folder / "spiece.model").write_bytes(b"a SentencePiece model")
    with pytest.raises(WeightsNotFoundError, match=rf"--text-encoder siglip:{folder}: its tokenizer cannot be loaded "
                                                   r"\(SiglipTokenizer requires the SentencePiece library.*\); "
                                                   r"install the package it names \(pip install sentencepiece"):
        siglip.load_tokenizer(str(folder), f"siglip:{folder}", "--text-encoder", "--text-weights")


def test_a_sentencepiece_tokenizer_as_google_publishes_siglips_tokenizes_as_transformers(tiny_siglip):
    from transformers import SiglipTokenizer

    folder = use_sentencepiece_tokenizer(tiny_siglip, TEXTS)
    encoder = build_text_encoder(f"siglip:{folder}")
    tokens = encoder.tokenize(TEXTS)["input_ids"]
    expected = SiglipTokenizer.from_pretrained(folder)(TEXTS, padding="max_length", max_length=64, truncation=True,
                                                       return_tensors="pt")["input_ids"]
    assert torch.equal(tokens, expected) and tokens.shape == (len(TEXTS), 64)
    assert encoder.token_report(TEXTS[0]).n_unknown == 0  # the Chinese characters are in its vocabulary
    assert torch.isfinite(encoder(tokens)).all()


def test_download_of_a_siglip_name_serves_both_towers_offline(tmp_path, monkeypatch, capsys, tiny_siglip):
    from models import download

    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # What a download leaves in the cache (the hub is out of reach here).
    snapshot = put_in_hf_cache(hub_cache, "google/medsiglip-448", {f.name: f for f in tiny_siglip.iterdir()})
    assert download.main([MEDSIGLIP]) == 0
    assert f"{MEDSIGLIP}: {snapshot / 'model.safetensors'}" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = build_image_encoder(MEDSIGLIP, img_size=IMG)  # the image side reads the same cache
    assert encoder.feature_dim == 32 and encoder.name == MEDSIGLIP


@pytest.mark.parametrize("missing", ["model.safetensors", "preprocessor_config.json"])
def test_a_folder_lacking_weights_or_its_processor_config_is_refused_naming_the_name(tiny_siglip, missing):
    (tiny_siglip / missing).unlink()
    name = f"siglip:{tiny_siglip}"
    with pytest.raises(WeightsNotFoundError, match=rf"--text-encoder {name}: cannot load the HuggingFace model folder"):
        build_clip_model(name, name, 8, 0.07, [["a"]], img_size=IMG)  # never a random start
