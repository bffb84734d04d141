"""Start-up warnings that save a study: descriptions the text encoder truncates, descriptions in a script
its tokenizer does not cover, and an image encoder that starts from random weights without being asked."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.clip_model import CLIPClassifier
from models.image_encoders import build_image_encoder, random_init_note
from models.text_checks import UNCOVERED_SHARE, is_uncovered, text_warnings
from models.text_encoders import build_text_encoder
from models.token_report import TokenReport, hf_token_report
from training.config import TrainConfig
from training.run import warn_model_choices

# 86 content tokens for CLIP's tokenizer (past its 77), 32 characters for a Chinese one.
LONG_CHINESE = "Corail 非骨水泥型股骨柄：全长羟基磷灰石涂层的锥形柄，横截面近似矩形"
SHORT_CHINESE = "保留股骨颈的非骨水泥型短柄"
ENGLISH_WITH_CHINESE_NAME = "A short femoral stem called 短柄 in Chinese reports"
ENGLISH = "a radiograph of a cemented femoral stem"


@pytest.fixture(scope="module")
def clip_scratch():
    return build_text_encoder("clip:ViT-B/32:scratch")


@pytest.fixture(scope="module")
def chinese_bert(tmp_path_factory) -> Path:
    """A tiny BERT whose WordPiece vocabulary holds the Chinese characters (and the Latin letters) of the
    test texts, saved as a HuggingFace folder: a Chinese tokenizer in a second."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("chinese_bert")
    characters = sorted(set(LONG_CHINESE + SHORT_CHINESE + "abcdefghijklmnopqrstuvwxyz") - {" "})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "corail", *characters]
    BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def clip_token_count(encoder, text: str) -> int:
    """Tokens with start and end, counted by open_clip's own tokenizer with room to spare."""
    return int((encoder.tokenizer([text], context_length=400) != 0).sum())


# -- too long -----------------------------------------------------------------------------------
def test_long_chinese_description_into_clip_warns_naming_the_class_and_token_count(clip_scratch):
    count = clip_token_count(clip_scratch, LONG_CHINESE)
    assert count > clip_scratch.context_length == 77
    lines = text_warnings(clip_scratch, "clip:ViT-B/32:scratch", ["股骨柄A", "cat_b"], [[LONG_CHINESE], [ENGLISH]])
    long_lines = [line for line in lines if "truncated" in line]
    assert len(long_lines) == 1
    assert "'股骨柄A'" in long_lines[0] and f"{count} tokens" in long_lines[0] and "77" in long_lines[0]
    assert "cat_b" not in long_lines[0]


def test_token_report_counts_what_clip_keeps(clip_scratch):
    report = clip_scratch.token_report(ENGLISH)
    assert report.n_tokens == clip_token_count(clip_scratch, ENGLISH) == report.n_content + 2
    assert report.n_unknown == 0


def test_the_same_text_into_a_chinese_tokenizer_does_not_warn(chinese_bert):
    encoder = build_text_encoder(f"hf:{chinese_bert}")
    report = encoder.token_report(LONG_CHINESE)
    assert report.n_unknown == 0 and report.n_tokens <= encoder.context_length
    assert text_warnings(encoder, f"hf:{chinese_bert}", ["股骨柄A", "短柄"], [[LONG_CHINESE], [SHORT_CHINESE]]) == []


def test_a_character_missing_from_a_wordpiece_vocabulary_is_unknown(chinese_bert):
    encoder = build_text_encoder(f"hf:{chinese_bert}")
    assert encoder.token_report("短柄翻") == TokenReport(n_tokens=5, n_unknown=1, n_content=3)  # 翻 not in vocab


def test_hf_context_is_the_smallest_of_its_limits(chinese_bert):
    # The tokenizer knows no limit (model_max_length is huge): the 64 position embeddings are the limit.
    encoder = build_text_encoder(f"hf:{chinese_bert}")
    assert encoder.context_length == 64
    long_text = SHORT_CHINESE * 6  # 78 characters, one token each
    lines = text_warnings(encoder, "chinese", ["短柄"], [[long_text]])
    assert len(lines) == 1 and "80 tokens" in lines[0] and "64" in lines[0]
    assert encoder.tokenize([long_text])["input_ids"].shape[1] == 64  # what the warning says happens


# -- script not covered ---------------------------------------------------------------------------
def test_chinese_into_clip_warns_once_with_the_chinese_encoders(clip_scratch):
    lines = text_warnings(clip_scratch, "clip:ViT-B/32", ["Corail", "短柄"], [[SHORT_CHINESE, SHORT_CHINESE + "。"],
                                                                            [SHORT_CHINESE]])
    assert len(lines) == 1
    assert "3 description(s)" in lines[0] and "Corail, 短柄" in lines[0]
    assert "bert-base-chinese" in lines[0] and "cn-clip:*" in lines[0]


def test_chinese_into_minilms_wordpiece_warns(tiny_text_encoder):
    # MiniLM's English vocabulary: most Chinese characters are [UNK].
    encoder = build_text_encoder(f"hf:{tiny_text_encoder}")
    report = encoder.token_report(SHORT_CHINESE)
    assert is_uncovered(report) and report.n_tokens == report.n_content + 2
    assert any("does not cover" in line for line in text_warnings(encoder, "all-MiniLM-L6-v2", ["a"],
                                                                  [[SHORT_CHINESE]]))


def test_an_english_description_naming_one_chinese_term_does_not_warn(clip_scratch):
    # The boundary: its Chinese characters are byte pieces (a third of the tokens), but it is English.
    report = clip_scratch.token_report(ENGLISH_WITH_CHINESE_NAME)
    assert 0 < report.n_unknown < UNCOVERED_SHARE * report.n_content
    assert text_warnings(clip_scratch, "clip:ViT-B/32", ["短柄"], [[ENGLISH_WITH_CHINESE_NAME]]) == []


def test_byte_level_bpe_counts_partial_characters_as_unknown():
    # RoBERTa/GPT-2 style: a byte-level BPE learnt on English spells Chinese characters byte by byte.
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([ENGLISH] * 10, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>", "<unk>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<unk>")
    chinese = hf_token_report(tokenizer, "短柄")
    assert chinese.n_content >= 2 and chinese.n_unknown == chinese.n_content
    assert hf_token_report(tokenizer, ENGLISH).n_unknown == 0


# -- random image weights -------------------------------------------------------------------------
def test_plain_image_encoder_name_gets_the_random_initialisation_line():
    note = random_init_note("resnet18")
    assert note is not None and "random initialisation; add :pretrained for ImageNet weights" in note


@pytest.mark.parametrize("name, weights", [("resnet18:pretrained", None), ("resnet18:true", None),
                                           ("resnet18:scratch", None), ("resnet18", "my_weights.pth")])
def test_loaded_or_explicitly_random_weights_get_no_line(name, weights):
    assert random_init_note(name, weights) is None


def test_an_encoder_without_published_weights_points_to_image_weights():
    note = random_init_note("starnet_s050")
    assert note is not None and "--image-weights" in note and ":pretrained" not in note


# -- at start-up ----------------------------------------------------------------------------------
@pytest.fixture
def train_clip_warnings(caplog, monkeypatch):
    """The train_clip logger's records, whether or not an earlier test ran setup_logging (which stops
    propagation to the root logger, where caplog listens)."""
    logger = logging.getLogger("train_clip")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="train_clip"):
        yield caplog
    logger.removeHandler(caplog.handler)


def test_start_up_logs_one_line_per_problem(clip_scratch, train_clip_warnings, tmp_path):
    caplog = train_clip_warnings
    texts = [[LONG_CHINESE, ENGLISH], [ENGLISH]]
    model = CLIPClassifier(build_image_encoder("resnet18"), clip_scratch, 8, 0.07, texts)
    cfg = TrainConfig(data_dir=str(tmp_path), image_encoder="resnet18", text_encoder="clip:ViT-B/32:scratch")
    warn_model_choices(cfg, model, ["股骨柄A", "cat_b"])
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages  # random init, truncated, script
    assert all("\n" not in message for message in messages)
    assert "random initialisation" in messages[0] and "truncated" in messages[1] and "does not cover" in messages[2]

    caplog.clear()
    weights = tmp_path / "resnet18.pth"
    torch.save(build_image_encoder("resnet18").backbone.state_dict(), weights)
    cfg = TrainConfig(data_dir=str(tmp_path), image_encoder="resnet18", image_weights=str(weights),
                      text_encoder="clip:ViT-B/32:scratch")
    model.set_class_texts([[ENGLISH], ["a radiograph of an uncemented stem"]])
    warn_model_choices(cfg, model, ["股骨柄A", "cat_b"])
    assert caplog.records == []
