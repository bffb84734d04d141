"""What the transformers-built CLIP families (Chinese-CLIP, SigLIP) share: each refuses the other's
folder by its config's model_type, and a checkpoint without a file it needs says which."""
from __future__ import annotations

import pytest

from models import chinese_clip, hf_models, siglip
from models.names import UnknownEncoderError, WeightsNotFoundError
from tests.clip_helpers import make_tiny_chinese_clip, make_tiny_siglip


@pytest.mark.parametrize("kind, other, says", [(siglip.KIND, make_tiny_chinese_clip, "chinese_clip"),
                                               (chinese_clip.KIND, make_tiny_siglip, "siglip")])
def test_a_folder_of_another_family_is_refused_naming_its_model_type(tmp_path, kind, other, says):
    folder = other(tmp_path / "model")
    name = f"{kind.prefix}{folder}"
    with pytest.raises(UnknownEncoderError, match=rf"--text-encoder {name}: not a {kind.title} model \(its "
                                                  rf"config.json says model_type '{says}'\)"):
        hf_models.load_config(kind, str(folder), name, "--text-encoder", "--text-weights")


def test_names_resolve_to_aliases_folders_or_hub_ids_and_misspellings_are_refused(tmp_path):
    assert siglip.resolve("MedSigLIP-448", "--text-encoder") == "google/medsiglip-448"
    assert siglip.resolve("org/some-siglip", "--text-encoder") == "org/some-siglip"
    assert siglip.resolve(str(tmp_path), "--text-encoder") == str(tmp_path)
    assert siglip.resolve("./gone", "--text-encoder", check_exists=False) == "./gone"  # a restore
    with pytest.raises(UnknownEncoderError, match=r"--image-encoder siglip:./gone: the folder ./gone does not exist"):
        siglip.resolve("./gone", "--image-encoder")
    with pytest.raises(UnknownEncoderError, match=r"did you mean 'siglip:MedSigLIP-448'"):
        siglip.resolve("MedSigLIP448", "--text-encoder")


def test_a_checkpoint_without_the_file_a_tower_needs_says_which(tmp_path):
    files = hf_models.saved_files(hf_models.load_config(siglip.KIND, str(make_tiny_siglip(tmp_path / "s")), "siglip:s",
                                                        "--text-encoder", "--text-weights"))
    assert hf_models.config_from_files(siglip.KIND, files).model_type == "siglip"
    with pytest.raises(WeightsNotFoundError, match="the checkpoint's SigLIP files lack preprocessor_config.json"):
        siglip.processor_from_files(files)
