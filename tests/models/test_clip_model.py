"""Several --text-template values (prompt ensembling): one rule for the flag, the JSON key and the study
setting; configs of older runs with one template string still load and resume; and the shipped class
descriptions fit CLIP's context."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from models.clip_model import CLIPClassifier
from models.image_encoders import build_image_encoder
from models.text_encoders import build_text_encoder
from tests.conftest import ROOT
from tests.equivalence import assert_same_float64
from tests.study.test_plan import arguments, settings_of
from training.arguments import config_from_args
from training.config import ConfigError
from utils.io import write_json

XRAY, PHOTO = "an X-ray of {class_name}", "这是一张{class_name}的X光片"


def test_the_flag_given_several_times_is_a_list_in_order():
    cfg = config_from_args(["--data-dir", "d", "--text-template", XRAY, "--text-template", PHOTO])
    assert cfg.text_template == [XRAY, PHOTO]


@pytest.mark.parametrize("value, expected", [(XRAY, [XRAY]), ([XRAY, PHOTO], [XRAY, PHOTO]), ([], None)])
def test_json_takes_a_string_or_a_list(tmp_path, value, expected):
    write_json(tmp_path / "c.json", {"data_dir": "d", "text_template": value})
    assert config_from_args(["--config", str(tmp_path / "c.json")]).text_template == expected


def test_the_command_line_replaces_the_configs_templates(tmp_path):
    write_json(tmp_path / "c.json", {"data_dir": "d", "text_template": [XRAY, PHOTO]})
    cfg = config_from_args(["--config", str(tmp_path / "c.json"), "--text-template", "a {class_name}"])
    assert cfg.text_template == ["a {class_name}"]


@pytest.mark.parametrize("value", [3, [XRAY, 3], {"a": XRAY}])
def test_json_rejects_other_types_naming_the_key(tmp_path, value):
    write_json(tmp_path / "c.json", {"data_dir": "d", "text_template": value})
    with pytest.raises(ConfigError, match="'text_template' must be a string or a list of strings"):
        config_from_args(["--config", str(tmp_path / "c.json")])


def test_every_template_needs_the_class_name():
    with pytest.raises(ConfigError, match="--text-template must contain '{class_name}', got 'an X-ray'"):
        config_from_args(["--data-dir", "d", "--text-template", XRAY, "--text-template", "an X-ray"])


def test_an_older_runs_single_template_resumes_and_is_compared_as_a_list(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # config.json as runs wrote it when text_template was one string.
    write_json(out / "config.json", {"data_dir": "d", "output_dir": str(out), "text_template": XRAY})
    cfg = config_from_args(["--resume", "--output-dir", str(out), "--text-template", XRAY])
    assert cfg.text_template == [XRAY]
    with pytest.raises(ConfigError, match="text_template"):
        config_from_args(["--resume", "--output-dir", str(out), "--text-template", XRAY, "--text-template", PHOTO])
    assert json.loads(json.dumps(cfg.to_dict()))["text_template"] == [XRAY]  # what new runs write


def test_study_setting_array_gives_the_flag_per_item_and_the_environment_one_template():
    block = {"DATA_DIR": "data", "IMAGE_ENCODERS": ["resnet18"], "TEXT_ENCODERS": ["clip:ViT-B/32"],
             "OUTPUT_ROOT": "runs", "TEXT_TEMPLATE": [XRAY, PHOTO]}
    command = arguments(settings_of(block))
    start = command.index("--text-template")
    assert command[start:start + 4] == ["--text-template", XRAY, "--text-template", PHOTO]
    command = arguments(settings_of(block, TEXT_TEMPLATE=XRAY))  # spaces stay inside the one template
    assert command.count("--text-template") == 1 and command[command.index("--text-template") + 1] == XRAY
    assert config_from_args(command).text_template == [XRAY]


def test_class_embedding_averages_descriptions_and_templates(tiny_text_encoder):
    texts = [["cemented stem", "an X-ray of cemented"], ["short stem", "an X-ray of short"]]
    model = CLIPClassifier(build_image_encoder("resnet18"), build_text_encoder(f"hf:{tiny_text_encoder}"), 8, 0.07,
                           texts).double()  # a mean of 2 embeddings against a sum of 2: other roundings
    with torch.no_grad():
        classes = model.encode_classes()
        for k, class_texts in enumerate(texts):
            single = CLIPClassifier(model.image_encoder, model.text_encoder, 8, 0.07,
                                    [[t] for t in class_texts]).double()
            single.text_proj.load_state_dict(model.text_proj.state_dict())
            expected = F.normalize(single.encode_classes().sum(dim=0), dim=-1)
            assert_same_float64(classes[k], expected, 32)


# -- the shipped class descriptions ---------------------------------------------------------------
def test_shipped_descriptions_fit_clips_context_in_chinese_and_english():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    data = json.loads((ROOT / "class_texts_hip_prosthesis.json").read_text(encoding="utf-8"))
    assert list(data) == ["Corail", "Exeter", "Taperloc", "Wagner_SL", "短柄"]
    for name, texts in data.items():
        assert isinstance(texts, list) and len(texts) >= 2, name
        assert any(all(ord(ch) < 128 for ch in text) for text in texts), f"{name}: no English description"
        assert any(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in texts), f"{name}: no Chinese one"
        for text in texts:
            n_tokens = int((tokenizer([text], context_length=400) != 0).sum())
            assert n_tokens <= 77, (name, n_tokens, text)
