"""Tiny, randomly initialised CLIP models saved as the hub publishes them (offline, in a second):
a Chinese-CLIP folder and a SigLIP folder (transformers), and an open_clip hf-hub repo in a
HuggingFace cache."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tests.weights_helpers import TINY_OPEN_CLIP_CONFIG, make_tiny_open_clip, put_in_hf_cache

TINY_CLIP_REPO = "someone/tiny-clip"
TINY_CLIP_NAME = f"clip:hf-hub:{TINY_CLIP_REPO}"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Letters and word pieces for English texts, and the characters of the tests' Chinese class names.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
CHINESE = "股骨柄髋关节假体一张的照片"


def write_vocabulary(path: Path) -> Path:
    """A WordPiece vocabulary that spells any lower-case ASCII word and the characters of CHINESE."""
    pieces = SPECIAL_TOKENS + list(ALPHABET) + [f"##{c}" for c in ALPHABET] + list(CHINESE) + list(".,:-_'")
    path.write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return path


def make_tiny_chinese_clip(folder: Path, seed: int = 0) -> Path:
    """A 1-layer Chinese-CLIP (32-px ViT, patch 16; 16-d embedding) and its BERT tokenizer, saved
    as ``save_pretrained`` writes them: what ``cn-clip:<folder>`` and ``--text-weights`` read."""
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(str(write_vocabulary(folder / "vocab.txt")))
    tokenizer.save_pretrained(folder)
    config = ChineseCLIPConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=16)
    torch.manual_seed(seed)
    model = ChineseCLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(4.0)  # not the default init, so a test sees whose scale is used
    model.save_pretrained(folder)
    return folder


# Not SigLIP's 0.5s, so that a test sees the processor config's statistics used.
SIGLIP_MEAN, SIGLIP_STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)


def make_tiny_siglip(folder: Path, seed: int = 0, logit_scale: float = 2.0, logit_bias: float = -3.0) -> Path:
    """A 1-layer SigLIP (32-px ViT, patch 16, no class token; 32-d embedding), a WordPiece tokenizer and
    an image processor config, saved as ``save_pretrained`` writes them: what ``siglip:<folder>`` reads.
    ``logit_scale`` and ``logit_bias`` are set (transformers initialises both to 0)."""
    from transformers import BertTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(str(write_vocabulary(folder / "vocab.txt")))
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=SIGLIP_MEAN,
                         image_std=SIGLIP_STD).save_pretrained(folder)
    config = SiglipConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
                     "projection_size": 32, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},  # the vocabulary's
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16})
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
        model.logit_bias.fill_(logit_bias)
    model.save_pretrained(folder)
    return folder


def cache_tiny_open_clip(hub_cache: Path, work: Path, seed: int = 0, repo: str = TINY_CLIP_REPO,
                         model_cfg: dict | None = None):
    """A tiny open_clip model published in ``hub_cache`` as ``repo``; returns the model."""
    torch.manual_seed(seed)
    model = make_tiny_open_clip(work, model_cfg)
    put_in_hf_cache(hub_cache, repo, {f.name: f for f in work.iterdir()})
    return model


def use_sentencepiece_tokenizer(folder: Path, texts: list[str]) -> Path:
    """Replace a tiny SigLIP folder's WordPiece tokenizer by a SentencePiece one trained on ``texts``
    (``spiece.model``, as Google publishes SigLIP's); its ids stay below the model's vocabulary size."""
    import sentencepiece
    from transformers import SiglipTokenizer

    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    corpus = folder.parent / "sentencepiece_corpus.txt"
    corpus.write_text("\n".join(texts * 20) + "\n", encoding="utf-8")
    prefix = folder.parent / "sentencepiece"
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=40,
                                             hard_vocab_limit=False, character_coverage=1.0, pad_id=0,
                                             eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    SiglipTokenizer(str(prefix.with_suffix(".model"))).save_pretrained(folder)
    return folder


# Tiny open_clip model configs of each tower layout (``{bert}``: a HuggingFace text model's folder). open_clip
# gives timm trunks no image size: they keep timm's 224 px.
OPEN_CLIP_LAYOUTS = {
    "vit": TINY_OPEN_CLIP_CONFIG["model_cfg"],
    "resnet": {**TINY_OPEN_CLIP_CONFIG["model_cfg"], "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16}},
    # BiomedCLIP's layout: a timm trunk with open_clip's linear head, a HuggingFace text tower with an MLP
    "timm-hf": {"embed_dim": 16, "custom_text": True,
                "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                               "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                "text_cfg": {"hf_model_name": "{bert}", "hf_tokenizer_name": "{bert}", "hf_proj_type": "mlp",
                             "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}},
    # open_clip's SigLIP layout: timm's attention pooling, a text transformer with a linear projection
    "timm-map": {"embed_dim": 192, "custom_text": True, "init_logit_bias": -10,  # no projection: the trunk's width
                 "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                "timm_pool": "map", "timm_proj": "none", "image_size": 224},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1,
                              "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}},
}


def cache_open_clip_layout(hub_cache: Path, work: Path, layout: str, bert: Path):
    """OPEN_CLIP_LAYOUTS[layout] published in ``hub_cache`` as ``someone/<layout>``, its HuggingFace text
    model (if any) the one in ``bert``; returns (its ``clip:`` name, the library's model)."""
    model_cfg = json.loads(json.dumps(OPEN_CLIP_LAYOUTS[layout]).replace("{bert}", str(bert)))
    work.mkdir(parents=True)
    for tokenizer_file in bert.glob("*tok*"):  # open_clip reads an hf tokenizer from the repo
        shutil.copy(tokenizer_file, work)
    repo = f"someone/{layout}"
    return f"clip:hf-hub:{repo}", cache_tiny_open_clip(hub_cache, work, repo=repo, model_cfg=model_cfg)


def open_clip_layout_pair(tmp_path: Path, monkeypatch, layout: str, bert: Path):
    """The classifier of OPEN_CLIP_LAYOUTS[layout]'s paired towers (two classes), built from a fresh
    HuggingFace cache under ``tmp_path``; returns (its ``clip:`` name, the classifier, the library's model)."""
    from models.clip_model import build_clip_model
    from tests.weights_helpers import point_caches_at

    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    name, library = cache_open_clip_layout(hub_cache, tmp_path / layout, layout, bert)
    return name, build_clip_model(name, name, 16, 0.07, [["hip"], ["knee"]]), library
