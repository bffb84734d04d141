"""Every encoder name of the guide builds and gives embeddings of the right shape; names are checked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.clip_model import CLIPClassifier
from models.image_encoders import (
    IMAGE_ENCODERS,
    build_image_encoder,
    resolve_image_encoder,
)
from models.names import EncoderSource, UnknownEncoderError, WeightsNotFoundError
from models.text_encoders import build_text_encoder, resolve_text_encoder
from training.config import ConfigError

GUIDE_IMAGE_NAMES = (
    [f"resnet{n}" for n in (18, 34, 50, 101, 152)]
    + [f"starnet_s{n}" for n in ("1", "2", "3", "4", "050", "100", "150")]
    + [f"efficientnet-b{i}" for i in range(8)]
    + [f"convnext-{size}" for size in ("tiny", "small", "base", "large")]
    + ["vit"]
)
EMBED_DIM = 16
IMG = 32  # divisible by ViT's patch size 16


@pytest.fixture(scope="module")
def text_encoder(tiny_text_encoder: Path):
    return build_text_encoder(f"hf:{tiny_text_encoder}")


def classifier(image_name: str, text_encoder) -> CLIPClassifier:
    return CLIPClassifier(build_image_encoder(image_name, img_size=IMG), text_encoder, EMBED_DIM, 0.07,
                          [["class a"], ["class b", "another b"]])


def test_registry_holds_every_name_of_the_guide():
    assert sorted(IMAGE_ENCODERS) == sorted(GUIDE_IMAGE_NAMES)


def test_timm_architectures_and_weight_tags_exist_in_installed_timm():
    import timm

    for spec in IMAGE_ENCODERS.values():
        if spec.library != "timm":
            continue
        assert timm.is_model(spec.arch), spec.arch
        if spec.weights is not None:
            assert spec.weights in timm.list_pretrained(f"{spec.arch}*"), spec.weights
    assert [n for n, s in IMAGE_ENCODERS.items() if s.weights is None] == [
        "starnet_s050", "starnet_s100", "starnet_s150"]


@pytest.mark.parametrize("name", GUIDE_IMAGE_NAMES)
def test_every_encoder_builds_with_its_recorded_feature_dim(name: str, text_encoder):
    with torch.device("meta"):
        model = classifier(name, text_encoder)
        embeddings = model.encode_images(torch.empty(3, 3, IMG, IMG))
    assert model.image_encoder.feature_dim == IMAGE_ENCODERS[name].feature_dim
    assert embeddings.shape == (3, EMBED_DIM)


# Every name for real on the CPU (about 25 s in all at 32 px), plus the timm open door.
@pytest.mark.parametrize("name", GUIDE_IMAGE_NAMES + ["timm:resnet10t"])
def test_batch_gives_normalised_embeddings(name: str, text_encoder):
    torch.manual_seed(0)
    model = classifier(name, text_encoder).eval()
    with torch.no_grad():
        image_emb, class_emb, scale = model(torch.randn(3, 3, IMG, IMG))
    assert image_emb.shape == (3, EMBED_DIM)
    assert class_emb.shape == (2, EMBED_DIM)
    torch.testing.assert_close(image_emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(class_emb.norm(dim=1), torch.ones(2))
    assert torch.isfinite(image_emb).all() and scale.item() == pytest.approx(1 / 0.07, rel=1e-4)


@pytest.mark.parametrize("name, paper_millions", [("starnet_s1", 2.9), ("starnet_s2", 3.7),
                                                  ("starnet_s3", 5.8), ("starnet_s4", 7.5)])
def test_starnet_parameter_counts_match_the_paper(name: str, paper_millions: float):
    import timm

    with torch.device("meta"):  # with the 1000-class head, as the paper counts
        model = timm.create_model(IMAGE_ENCODERS[name].arch, num_classes=1000)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(paper_millions * 1e6, rel=0.05)


def test_vit_follows_img_size_and_rejects_sizes_off_the_patch_grid():
    with torch.device("meta"):
        encoder = build_image_encoder("vit", img_size=64)
        assert encoder.backbone.pos_embed.shape[1] == 1 + (64 // 16) ** 2
        assert encoder(torch.empty(2, 3, 64, 64)).shape == (2, 768)
        with pytest.raises(ConfigError, match=r"--img-size 40: .*vit needs a multiple of its patch size 16"):
            build_image_encoder("vit", img_size=40)


def test_timm_open_door_reads_feature_dim_from_the_model():
    encoder = build_image_encoder("timm:resnet10t", img_size=IMG)
    assert encoder.feature_dim == 512
    assert encoder.name == "timm:resnet10t"


def test_pretrained_suffixes_and_random_default():
    assert resolve_image_encoder("starnet_s1")[1] is False
    assert resolve_image_encoder("starnet_s1:pretrained")[1] is True
    assert resolve_image_encoder("starnet_s1:true")[1] is True
    assert resolve_image_encoder("starnet_s1", weights="x.pth")[1] is True  # an explicit file is loaded


@pytest.mark.parametrize("name", ["starnet_s050:pretrained", "starnet_s100:true", "starnet_s150:pretrained"])
def test_pretrained_on_starnet_without_published_weights_is_an_error(name: str):
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights exist for 'starnet_s"):
        resolve_image_encoder(name)


def test_scratch_with_an_explicit_weights_file_is_a_contradiction():
    with pytest.raises(ConfigError, match="--image-weights"):
        resolve_image_encoder("resnet18:scratch", weights="w.pth")
    with pytest.raises(ConfigError, match="--text-weights"):
        resolve_text_encoder("clip:RN50:scratch", weights="w.pth")


@pytest.mark.parametrize("name, suggestion", [
    ("resnet-50", "resnet50"), ("convnext_tiny", "convnext-tiny"), ("efficientnet_b3", "efficientnet-b3"),
    ("starnet-s2", "starnet_s2"),
])
def test_unknown_image_names_list_valid_ones_and_suggest_the_closest(name: str, suggestion: str):
    with pytest.raises(UnknownEncoderError) as info:
        resolve_image_encoder(f"{name}:pretrained")
    message = str(info.value)
    assert f"did you mean '{suggestion}'?" in message
    assert "valid names: " in message and "vit" in message and "timm:<timm model name>" in message


def test_unknown_timm_and_text_names_suggest_the_closest():
    with pytest.raises(UnknownEncoderError, match=r"did you mean 'timm:convnext_nano'\?"):
        resolve_image_encoder("timm:convnext_nanoo")
    with pytest.raises(UnknownEncoderError, match=r"did you mean 'clip:ViT-B-32'\?"):
        resolve_text_encoder("clip:ViT-B-33")
    with pytest.raises(UnknownEncoderError, match=r"did you mean 'bert-base-chinese'\?.*valid names: "):
        resolve_text_encoder("bert-base-chinses")


def test_text_encoder_names_resolve_to_their_sources():
    assert resolve_text_encoder("clip:ViT-B/32") == EncoderSource("clip", "ViT-B-32-quickgelu", "openai", True)
    assert resolve_text_encoder("clip:RN50") == EncoderSource("clip", "RN50-quickgelu", "openai", True)
    biomed = resolve_text_encoder("clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    assert biomed.hub_repo == "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" and biomed.pretrained
    assert resolve_text_encoder("bert-base-chinese").model == "google-bert/bert-base-chinese"
    assert resolve_text_encoder("clip:ViT-B/32:scratch").pretrained is False
    assert resolve_text_encoder("hf:some/model:scratch") == EncoderSource("hf", "some/model", None, False)


def test_clip_scratch_builds_the_text_tower_with_random_weights():
    encoder = build_text_encoder("clip:ViT-B/32:scratch")
    assert encoder.clip.visual is None  # the vision tower is not kept
    assert encoder.feature_dim == 512
    features = encoder(**encoder.tokenize(["a radiograph", "a hip implant"]))
    assert features.shape == (2, 512) and torch.isfinite(features).all()


def test_hf_scratch_keeps_the_architecture_but_not_the_weights(tiny_text_encoder: Path):
    pretrained = build_text_encoder(f"hf:{tiny_text_encoder}")
    scratch = build_text_encoder(f"hf:{tiny_text_encoder}:scratch")
    assert scratch.feature_dim == pretrained.feature_dim == 32
    assert not torch.equal(scratch.model.embeddings.word_embeddings.weight,
                           pretrained.model.embeddings.word_embeddings.weight)


def test_list_encoders_prints_sizes_and_weight_status_without_data_dir(tmp_path, monkeypatch, capsys):
    import train_clip
    from models import registry_table
    from tests.weights_helpers import point_caches_at

    torch_hub, _ = point_caches_at(monkeypatch, tmp_path)
    (torch_hub / "checkpoints").mkdir(parents=True)
    (torch_hub / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"cached")  # torchvision's file name
    # A subset keeps the test fast; every name is built by the tests above.
    monkeypatch.setattr(registry_table, "IMAGE_ENCODERS",
                        {n: IMAGE_ENCODERS[n] for n in ("resnet18", "resnet34", "starnet_s050", "starnet_s1")})
    assert train_clip.main(["--list-encoders"]) == 0
    rows = {line.split()[0]: line.split(maxsplit=2)[2].split() for line in capsys.readouterr().out.splitlines()
            if line and not line.startswith((" ", "-", "name")) and len(line.split()) >= 5}
    assert rows["resnet18"] == ["11.2M", "512", "yes"]
    assert rows["resnet34"] == ["21.3M", "512", "not", "cached"]
    assert rows["starnet_s050"] == ["0.4M", "128", "no"]
    assert rows["starnet_s1"] == ["2.7M", "192", "not", "cached"]  # without the 1000-class head
    assert rows["clip:ViT-B/32"] == ["63.4M", "512", "not", "cached"]
    assert rows["all-MiniLM-L6-v2"] == ["22.7M", "384", "yes"]  # bundled with the environment


def test_hf_folder_that_does_not_exist_is_named_before_anything_loads(tmp_path):
    from models.names import UnknownEncoderError
    from models.text_encoders import resolve_text_encoder

    with pytest.raises(UnknownEncoderError, match="does not exist"):
        resolve_text_encoder(f"hf:{tmp_path / 'missing'}")
