"""The CLIP families' table: one entry per family, and every caller reaches the family's own builder."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from models import clip_builders, open_clip_towers
from models.clip_builders import CLIP_BUILDERS
from models.clip_towers import build_clip_image, build_clip_pair, resolve_clip_image
from models.families import CLIP_FAMILIES, HUGGINGFACE
from models.names import EncoderSource
from models.registry_table import clip_counts
from models.text_encoders import build_text_encoder, resolve_text_encoder, text_weights_location
from models.weights import HF_WEIGHT_FILES, WeightsLocation
from utils.errors import ConfigError

# An alias of each family: resolved from the module's table, nothing is loaded or looked up.
NAMES = {"clip": "clip:ViT-B/32", "cn-clip": "cn-clip:ViT-B/16", "siglip": "siglip:ViT-B/16"}
FILES = {"config.json": torch.tensor([123], dtype=torch.uint8)}


def test_every_clip_family_has_one_entry_under_its_key():
    assert list(CLIP_BUILDERS) == [family.key for family in CLIP_FAMILIES]
    assert [builders.family for builders in CLIP_BUILDERS.values()] == list(CLIP_FAMILIES)
    assert set(NAMES) == set(CLIP_BUILDERS)


def test_an_unknown_key_says_which_are_clip_families():
    with pytest.raises(KeyError, match="'hf' is not a CLIP family; the CLIP families are clip, cn-clip, siglip"):
        clip_builders.clip_builders(HUGGINGFACE.key)


class Calls:
    """Stands in for one operation of a family: records its arguments, returns a marker."""

    def __init__(self, operation: str) -> None:
        self.operation, self.args = operation, []

    def __call__(self, *args: Any) -> str:
        self.args.append(args)
        return self.operation


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> dict[str, Calls]:
    """The family of ``request.param`` with every building operation recorded instead of run."""
    key = request.param
    operations = ("image", "image_from_files", "pair", "pair_from_files", "text", "text_from_files",
                  "weights_location", "counts")
    calls = {operation: Calls(operation) for operation in operations}
    monkeypatch.setitem(CLIP_BUILDERS, key, dataclasses.replace(CLIP_BUILDERS[key], **calls))
    return calls


@pytest.mark.parametrize("recorded", list(NAMES), indirect=True)
def test_the_image_tower_is_built_by_its_family(recorded, request):
    key = request.node.callspec.params["recorded"]
    name = NAMES[key]
    assert build_clip_image(name, img_size=224) == "image"
    (source, called_name, pretrained, img_size, weights), = recorded["image"].args
    assert (source.kind, called_name, pretrained, img_size, weights) == (key, name, True, 224, None)
    assert build_clip_image(f"{name}:scratch") == "image" and recorded["image"].args[-1][2] is False
    assert build_clip_image(name, load_pretrained=False, files=FILES) == "image_from_files"  # a restore
    assert recorded["image_from_files"].args == [(FILES, name, None)]


@pytest.mark.parametrize("recorded", list(NAMES), indirect=True)
def test_the_pair_is_built_by_its_family(recorded, request):
    key = request.node.callspec.params["recorded"]
    name = NAMES[key]
    source = resolve_clip_image(name)
    assert build_clip_pair(source, name, load_pretrained=False) == "pair"  # no files: the architecture
    assert recorded["pair"].args == [(source, name, False, None, None)]
    assert build_clip_pair(source, name, load_pretrained=False, img_size=96, text_files=FILES) == "pair_from_files"
    assert recorded["pair_from_files"].args == [(FILES, name, 96)]


@pytest.mark.parametrize("recorded", list(NAMES), indirect=True)
def test_the_text_encoder_its_files_weights_and_sizes_come_from_its_family(recorded, request, monkeypatch):
    key = request.node.callspec.params["recorded"]
    name = NAMES[key]
    assert build_text_encoder(name, load_pretrained=False) == "text"
    (source, called_name, pretrained, weights), = recorded["text"].args
    assert (source.kind, called_name, pretrained, weights) == (key, name, False, None)
    assert build_text_encoder(name, load_pretrained=False, saved_files=FILES) == "text_from_files"
    assert recorded["text_from_files"].args == [(FILES,)]
    assert text_weights_location(source) == "weights_location"
    for other in set(CLIP_BUILDERS) - {key}:  # counted too (every alias is): not what this test is about
        monkeypatch.setitem(CLIP_BUILDERS, other, dataclasses.replace(CLIP_BUILDERS[other], counts=Calls("other")))
    assert clip_counts()[name] == (source, "counts")


def test_a_huggingface_text_encoder_is_no_clip_familys():
    source = EncoderSource(HUGGINGFACE.key, "org/some-bert", None, True)
    assert text_weights_location(source) == WeightsLocation(repo="org/some-bert", filenames=HF_WEIGHT_FILES)


def test_open_clip_refuses_checkpoint_files_it_would_not_read():
    """open_clip towers save none (their configs ship with open_clip); files for one are a bug."""
    with pytest.raises(ValueError, match="open_clip towers keep no files"):
        open_clip_towers.BUILDERS.image_from_files(FILES, "clip:ViT-B/32", None)


@pytest.mark.parametrize("key, folder", [("clip", False), ("cn-clip", True), ("siglip", True)])
def test_only_transformers_families_need_a_weights_folder(tmp_path, key, folder):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    assert CLIP_BUILDERS[key].weights_folder is folder
    if folder:
        with pytest.raises(ConfigError, match="not a file"):
            resolve_text_encoder(NAMES[key], str(weights))
    else:
        assert resolve_text_encoder(NAMES[key], str(weights)).kind == key
