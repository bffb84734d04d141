"""The real pretrained path: explicit files and populated caches give the saved weights exactly;
missing weights stop a run before anything is written, with one line saying what to do."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import train_clip
from models import download
from models.image_encoders import build_image_encoder
from models.names import WeightsNotFoundError
from models.open_clip_towers import clip_weights_location
from models.text_encoders import build_text_encoder, resolve_text_encoder
from tests.equivalence import assert_same_float64
from tests.weights_helpers import make_tiny_open_clip, point_caches_at, put_in_hf_cache

# File names the libraries themselves use (written out here so the tests do not trust our code).
TORCHVISION_RESNET18_FILE = "resnet18-f37072fd.pth"
STARNET_S1_REPO = "timm/starnet_s1.in1k"
BERT_CHINESE_REPO = "google-bert/bert-base-chinese"
HF_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.txt")


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def random_resnet18(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18()  # with its 1000-class head, like the published file


def headless(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(f"{head}.")}


# ---------------------------------------------------------------------------------------------
# Image encoders
# ---------------------------------------------------------------------------------------------
def test_torchvision_weights_from_file_and_from_torch_home_are_identical(tmp_path, monkeypatch):
    torch_hub, _ = point_caches_at(monkeypatch, tmp_path)
    source = random_resnet18(1)
    weights = tmp_path / "my_resnet18.pth"
    torch.save(source.state_dict(), weights)
    from_file = build_image_encoder("resnet18:pretrained", weights=str(weights)).eval()
    (torch_hub / "checkpoints").mkdir(parents=True)
    shutil.copy(weights, torch_hub / "checkpoints" / TORCHVISION_RESNET18_FILE)
    from_cache = build_image_encoder("resnet18:pretrained").eval()

    expected = headless(source.state_dict(), "fc")
    assert_same_tensors(from_file.backbone.state_dict(), expected)
    assert_same_tensors(from_cache.backbone.state_dict(), expected)
    source.fc = nn.Identity()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_file(images), source.eval()(images))
        assert torch.equal(from_cache(images), source(images))


def test_explicit_file_wins_over_the_cache(tmp_path, monkeypatch):
    torch_hub, _ = point_caches_at(monkeypatch, tmp_path)
    (torch_hub / "checkpoints").mkdir(parents=True)
    torch.save(random_resnet18(1).state_dict(), torch_hub / "checkpoints" / TORCHVISION_RESNET18_FILE)
    mine = random_resnet18(2)
    torch.save(mine.state_dict(), tmp_path / "mine.pth")
    encoder = build_image_encoder("resnet18:pretrained", weights=str(tmp_path / "mine.pth"))
    assert_same_tensors(encoder.backbone.state_dict(), headless(mine.state_dict(), "fc"))


def test_timm_weights_from_file_and_from_the_huggingface_cache_are_identical(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    torch.manual_seed(3)
    source = timm.create_model("starnet_s1")  # with head, as published on the hub
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    torch.save(source.state_dict(), tmp_path / "starnet.pth")
    put_in_hf_cache(hf_hub, STARNET_S1_REPO, {"model.safetensors": tmp_path / "model.safetensors"})

    from_cache = build_image_encoder("starnet_s1:pretrained").eval()
    from_file = build_image_encoder("starnet_s1:pretrained", weights=str(tmp_path / "starnet.pth")).eval()
    expected = headless(source.state_dict(), "head")
    assert_same_tensors(from_cache.backbone.state_dict(), expected)
    assert_same_tensors(from_file.backbone.state_dict(), expected)
    source.reset_classifier(0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_cache(images), source.eval()(images))
        assert torch.equal(from_file(images), source(images))


def test_vit_position_embeddings_are_resampled_for_another_img_size(tmp_path):
    import timm
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(4)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32)  # a 2x2 patch grid
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    same = build_image_encoder("timm:vit_tiny_patch16_224", img_size=32, weights=str(tmp_path / "vit.pth"))
    assert_same_tensors(same.backbone.state_dict(), headless(source.state_dict(), "head"))

    larger = build_image_encoder("timm:vit_tiny_patch16_224", img_size=48, weights=str(tmp_path / "vit.pth"))
    expected = resample_abs_pos_embed(source.pos_embed, new_size=(3, 3), num_prefix_tokens=1)
    assert larger.backbone.pos_embed.shape == (1, 1 + 9, 192)
    assert torch.equal(larger.backbone.pos_embed, expected)
    assert torch.equal(larger.backbone.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert larger(torch.randn(1, 3, 48, 48)).shape == (1, 192)


def test_weights_of_another_architecture_are_refused(tmp_path):
    import timm

    torch.save(timm.create_model("starnet_s1").state_dict(), tmp_path / "s1.pth")
    with pytest.raises(WeightsNotFoundError, match=r"s1\.pth: these weights do not fit encoder 'starnet_s2'"):
        build_image_encoder("starnet_s2:pretrained", weights=str(tmp_path / "s1.pth"))
    torch.save(random_resnet18(0).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsNotFoundError, match="do not fit encoder 'resnet34'"):
        build_image_encoder("resnet34", weights=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match=r"junk\.pth: not a readable weights file"):
        build_image_encoder("resnet18", weights=str(tmp_path / "junk.pth"))


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------
def test_hf_text_weights_from_a_folder_and_from_the_huggingface_cache_are_identical(
        tmp_path, monkeypatch, tiny_text_encoder: Path):
    from transformers import AutoModel

    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    put_in_hf_cache(hf_hub, BERT_CHINESE_REPO, {name: tiny_text_encoder / name for name in HF_MODEL_FILES})
    expected = AutoModel.from_pretrained(tiny_text_encoder).state_dict()
    from_cache = build_text_encoder("bert-base-chinese")
    from_folder = build_text_encoder("bert-base-chinese", weights=str(tiny_text_encoder))
    assert_same_tensors(from_cache.model.state_dict(), expected)
    assert_same_tensors(from_folder.model.state_dict(), expected)
    tokens = from_cache.tokenize(["股骨柄 A", "an X-ray"])
    with torch.no_grad():
        assert torch.equal(from_cache.eval()(**tokens), from_folder.eval()(**tokens))


def test_open_clip_hub_model_from_the_cache_and_an_explicit_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    torch.manual_seed(5)
    published = make_tiny_open_clip(tmp_path / "repo")
    put_in_hf_cache(hf_hub, "someone/tiny-clip", {f.name: f for f in (tmp_path / "repo").iterdir()})
    from_cache = build_text_encoder("clip:hf-hub:someone/tiny-clip")
    assert from_cache.feature_dim == 16
    assert torch.equal(from_cache.clip.token_embedding.weight, published.token_embedding.weight)
    assert torch.equal(from_cache.clip.text_projection, published.text_projection)

    torch.manual_seed(6)
    mine = make_tiny_open_clip(tmp_path / "mine")
    save_file(mine.state_dict(), tmp_path / "mine.safetensors")
    from_file = build_text_encoder("clip:hf-hub:someone/tiny-clip", weights=str(tmp_path / "mine.safetensors"))
    assert torch.equal(from_file.clip.token_embedding.weight, mine.token_embedding.weight)
    tokens = from_file.tokenize(["a hip implant"])
    # Our tokens stop at the end-of-text token; open_clip's own forward wants the whole context (0-padded).
    padded = torch.nn.functional.pad(tokens["text"], (0, mine.context_length - tokens["text"].shape[1]))
    with torch.no_grad():  # in float64: the padding changes the order of the sums (tests/equivalence.py)
        assert_same_float64(from_file.double()(**tokens), mine.double().encode_text(padded), 4 * 32)

    scratch = build_text_encoder("clip:hf-hub:someone/tiny-clip:scratch")
    assert not torch.equal(scratch.clip.token_embedding.weight, published.token_embedding.weight)


def test_openai_clip_weights_are_looked_up_in_open_clips_hub_repo(tmp_path, monkeypatch):
    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    location = clip_weights_location(resolve_text_encoder("clip:ViT-B/32"))
    assert location.repo == "timm/vit_base_patch32_clip_224.openai"
    assert location.cached() is None
    (tmp_path / "w.bin").write_bytes(b"x")
    snapshot = put_in_hf_cache(hf_hub, location.repo, {"open_clip_pytorch_model.bin": tmp_path / "w.bin"})
    assert location.cached() == snapshot / "open_clip_pytorch_model.bin"


# ---------------------------------------------------------------------------------------------
# Missing weights stop the run before anything is written
# ---------------------------------------------------------------------------------------------
def run_main(tmp_path: Path, image_tree: Path, *flags: str) -> tuple[int, Path, list[str]]:
    out = tmp_path / "run"
    log_file = tmp_path / "logs" / "run.log"
    code = train_clip.main(["--data-dir", str(image_tree), "--img-size", "32", "--epochs", "1",
                            "--batch-size", "4", "--num-workers", "0", "--output-dir", str(out),
                            "--log-file", str(log_file), *flags])
    errors = [line for line in log_file.read_text(encoding="utf-8").splitlines() if " ERROR " in line] \
        if log_file.exists() else []
    return code, out, errors


def test_missing_image_weights_give_one_line_and_write_nothing(tmp_path, monkeypatch, image_tree,
                                                               tiny_text_encoder):
    torch_hub, _ = point_caches_at(monkeypatch, tmp_path / "caches")
    code, out, errors = run_main(tmp_path, image_tree, "--image-encoder", "resnet18:pretrained",
                                 "--text-encoder", f"hf:{tiny_text_encoder}")
    assert code == 2
    assert not out.exists()
    assert len(errors) == 1
    assert "--image-encoder resnet18:pretrained: pretrained weights not found" in errors[0]
    assert str(torch_hub / "checkpoints" / TORCHVISION_RESNET18_FILE) in errors[0]
    assert "python -m models.download resnet18:pretrained" in errors[0]


def test_missing_text_weights_give_one_line_and_write_nothing(tmp_path, monkeypatch, image_tree):
    _, hf_hub = point_caches_at(monkeypatch, tmp_path / "caches")
    code, out, errors = run_main(tmp_path, image_tree, "--image-encoder", "resnet18",
                                 "--text-encoder", "bert-base-chinese")
    assert code == 2
    assert not out.exists()
    assert len(errors) == 1
    assert str(hf_hub) in errors[0] and BERT_CHINESE_REPO in errors[0]
    assert "python -m models.download bert-base-chinese" in errors[0]


def test_weights_flags_that_name_nothing_are_config_errors(tmp_path, image_tree, capsys):
    code = train_clip.main(["--data-dir", str(image_tree), "--image-weights", str(tmp_path / "none.pth"),
                            "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert "--image-weights" in capsys.readouterr().err and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# python -m models.download
# ---------------------------------------------------------------------------------------------
def test_download_needs_names():
    with pytest.raises(SystemExit) as info:
        download.main([])
    assert info.value.code == 2


def test_download_refuses_offline_mode(capsys):
    assert download.main(["resnet18"]) == 2  # conftest sets HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("resnet-18", "did you mean 'resnet18'?"),
    ("starnet_s050", "no pretrained weights are published for 'starnet_s050'"),
])
def test_download_checks_every_name_before_fetching(name, message, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetched = []
    monkeypatch.setattr(download, "fetch", fetched.append)
    assert download.main(["resnet18", name]) == 2
    assert message in capsys.readouterr().err
    assert fetched == []


def test_download_fills_torch_home_where_training_then_finds_it(tmp_path, monkeypatch, capsys):
    torch_hub, _ = point_caches_at(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    source = random_resnet18(7)
    torch.save(source.state_dict(), tmp_path / "served.pth")
    urls = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:  # the internet, locally
        urls.append(url)
        shutil.copy(tmp_path / "served.pth", dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert download.main(["resnet18"]) == 0
    cached = torch_hub / "checkpoints" / TORCHVISION_RESNET18_FILE
    assert urls == [f"https://download.pytorch.org/models/{TORCHVISION_RESNET18_FILE}"]
    assert f"resnet18: {cached}" in capsys.readouterr().out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now the air-gapped server, with the copied cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", None)
    encoder = build_image_encoder("resnet18:pretrained")
    assert_same_tensors(encoder.backbone.state_dict(), headless(source.state_dict(), "fc"))


def test_download_of_a_timm_encoder_fills_the_huggingface_cache(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    save_file(timm.create_model("starnet_s1").state_dict(), tmp_path / "model.safetensors")
    asked = []

    def fake_hf_hub_download(repo_id: str, filename: str, cache_dir: str) -> str:
        asked.append((repo_id, filename, Path(cache_dir)))
        return str(put_in_hf_cache(Path(cache_dir), repo_id, {filename: tmp_path / filename}) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    assert download.main(["starnet_s1:pretrained"]) == 0
    assert asked == [(STARNET_S1_REPO, "model.safetensors", hf_hub)]
    assert str(hf_hub) in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_image_encoder("starnet_s1:pretrained")  # found in the cache, no download


def test_download_of_a_text_encoder_runs_the_trainers_loader(tmp_path, monkeypatch, capsys, tiny_text_encoder):
    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot = put_in_hf_cache(hf_hub, BERT_CHINESE_REPO,
                               {name: tiny_text_encoder / name for name in HF_MODEL_FILES})
    assert download.main(["bert-base-chinese"]) == 0
    assert f"bert-base-chinese: {snapshot / 'model.safetensors'}" in capsys.readouterr().out


def test_restoring_from_a_run_config_needs_no_weights_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from models.clip_model import build_clip_model, model_kwargs_from_config
    from training.config import TrainConfig

    _, hf_hub = point_caches_at(monkeypatch, tmp_path)
    make_tiny_open_clip(tmp_path / "repo")
    put_in_hf_cache(hf_hub, "someone/tiny-clip", {f.name: f for f in (tmp_path / "repo").iterdir()})
    save_file(make_tiny_open_clip(tmp_path / "mine").state_dict(), tmp_path / "mine.safetensors")
    torch.save(random_resnet18(0).state_dict(), tmp_path / "r18.pth")
    config = TrainConfig(data_dir="unused", image_encoder="timm:vit_tiny_patch16_224:pretrained", img_size=32,
                         image_weights=str(tmp_path / "r18.pth"), text_encoder="clip:hf-hub:someone/tiny-clip",
                         text_weights=str(tmp_path / "mine.safetensors")).to_dict()
    for used in ("r18.pth", "mine.safetensors"):
        (tmp_path / used).unlink()  # the run was copied to a machine without the weight files
    model = build_clip_model(**model_kwargs_from_config(config), class_texts=[["a"], ["b"]], load_pretrained=False)
    assert model.image_encoder.backbone.pos_embed.shape[1] == 1 + 2 * 2  # built at the run's img_size
    assert model.text_encoder.feature_dim == 16


def test_a_wrapped_data_parallel_state_dict_is_unwrapped_and_a_foreign_file_refused(tmp_path):
    from models.weights import read_state_dict

    weight = torch.arange(6.0).view(2, 3)
    torch.save({"state_dict": {"module.fc.weight": weight}, "epoch": 3}, tmp_path / "wrapped.pth")
    state = read_state_dict(tmp_path / "wrapped.pth", "--image-weights")
    assert list(state) == ["fc.weight"] and torch.equal(state["fc.weight"], weight)
    torch.save({"fc.weight": weight, "note": "not a tensor"}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsNotFoundError, match="expected a dict of tensors"):
        read_state_dict(tmp_path / "mixed.pth", "--image-weights")
    (tmp_path / "text.pth").write_text("not torch", encoding="utf-8")
    with pytest.raises(WeightsNotFoundError, match=r"--image-weights .*text.pth: not a readable weights file"):
        read_state_dict(tmp_path / "text.pth", "--image-weights")
