"""open_clip models (``clip:<model>``): their names, where their weights are, loading, the text tower.

``clip:ViT-B/32``, ``clip:RN50`` (OpenAI weights, QuickGELU configs), ``clip:<open_clip model>``
(its first listed pretrained tag) and ``clip:hf-hub:<repo>`` (an open_clip model published on the
HuggingFace hub, e.g. BiomedCLIP). Both towers load through :func:`load_open_clip`; this module builds
the text tower (:class:`OpenCLIPTextEncoder`), the image tower and the pair, and :data:`BUILDERS` is the
family's entry in the table of :mod:`models.clip_builders`.
``--text-weights`` / ``--image-weights`` is a weights file, or a folder holding one (and, for
``hf-hub`` models, its ``open_clip_config.json``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from models.causal_text import causal_text_tower, encode_causal, pooled_positions
from models.clip_base import (IMAGE_FLAG, IMAGE_WEIGHTS_FLAG, TEXT_FLAG, TEXT_WEIGHTS_FLAG, CLIPCounts,
                              CLIPFamilyBuilders, CLIPImage, CLIPImageBackbone, CLIPPair, Files, check_size,
                              count_parameters)
from models.families import OPEN_CLIP
from models.names import HF_HUB_PREFIX, EncoderSource, UnknownEncoderError, WeightsNotFoundError
from models.token_report import TokenReport, hf_token_report, is_byte_piece
from models.weights import (WeightsLocation, download_note, fetch_weights_file, hf_hub_cache, incompatible_weights,
                            weights_not_found)
from utils.errors import closest
from utils.logging_setup import get_logger

log = get_logger(__name__)

# Friendly open_clip names → (open_clip model config, pretrained tag). The OpenAI weights were
# trained with QuickGELU, so the -quickgelu configs are the ones that reproduce them.
CLIP_ALIASES = {
    "ViT-B/32": ("ViT-B-32-quickgelu", "openai"),
    "ViT-B/16": ("ViT-B-16-quickgelu", "openai"),
    "ViT-L/14": ("ViT-L-14-quickgelu", "openai"),
    "RN50": ("RN50-quickgelu", "openai"),
    "RN101": ("RN101-quickgelu", "openai"),
}
# open_clip's weight file names, preferred first (as open_clip's own local-dir loader orders them).
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                          "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's download order
OPEN_CLIP_CONFIG = "open_clip_config.json"

def resolve_open_clip(model: str, pretrained: bool, flag: str = TEXT_FLAG) -> EncoderSource:
    """The open_clip model of ``clip:<model>`` (no suffix; loads nothing): an alias, ``hf-hub:<repo>`` or a
    name of ``open_clip.list_models()`` with its first pretrained tag."""
    if model in CLIP_ALIASES:
        config, tag = CLIP_ALIASES[model]
        return EncoderSource(OPEN_CLIP.key, config, tag, pretrained)
    if model.startswith(HF_HUB_PREFIX) and len(model) > len(HF_HUB_PREFIX):
        return EncoderSource(OPEN_CLIP.key, model, None, pretrained)
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
    return EncoderSource(OPEN_CLIP.key, config, tags[0] if tags else None, pretrained)


def clip_weights_location(source: EncoderSource) -> WeightsLocation | None:
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


def _explicit_clip(path: Path, weights_flag: str = TEXT_WEIGHTS_FLAG) -> tuple[Path | None, Path]:
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


def _hub_config_dir(source: EncoderSource, name: str, flag: str = TEXT_FLAG, weights_flag: str = TEXT_WEIGHTS_FLAG) -> Path:
    """The cached folder holding an hf-hub model's open_clip_config.json (cache, else download)."""
    location = WeightsLocation(repo=source.hub_repo, filenames=(OPEN_CLIP_CONFIG,))
    return fetch_weights_file(location, flag, name, weights_flag).parent


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


def load_open_clip(source: EncoderSource, name: str, load_pretrained: bool, weights: str | None = None,
                   flag: str = TEXT_FLAG, weights_flag: str = TEXT_WEIGHTS_FLAG) -> LoadedOpenCLIP:
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
        loaded.model.visual = None
        self.clip = loaded.model
        self.tokenizer = loaded.tokenizer
        self.feature_dim = _embed_dim(loaded.config_name)

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


def _embed_dim(config_name: str) -> int:
    import open_clip

    return int(open_clip.get_model_config(config_name)["embed_dim"])


def _statistics(source: EncoderSource, visual: nn.Module) -> tuple[tuple, tuple]:
    """The mean/std the weights were trained with: the pretrained tag's, else the model config's."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(source.model, source.tag) if source.tag else {}
    mean = tag_cfg.get("mean") or visual.image_mean or open_clip.OPENAI_DATASET_MEAN
    std = tag_cfg.get("std") or visual.image_std or open_clip.OPENAI_DATASET_STD
    return tuple(mean), tuple(std)


def _image(source: EncoderSource, name: str, visual: nn.Module, embed_dim: int, img_size: int | None) -> CLIPImage:
    size = getattr(visual, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    check_size(name, size, img_size, "its position embeddings are fixed")
    mean, std = _statistics(source, visual)
    return CLIPImage(CLIPImageBackbone(visual, mean, std), embed_dim)


def build_image(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
                weights: str | None) -> CLIPImage:
    loaded = load_open_clip(source, name, pretrained, weights, IMAGE_FLAG, IMAGE_WEIGHTS_FLAG)
    return _image(source, name, loaded.model.visual, _embed_dim(loaded.config_name), img_size)


def build_pair(source: EncoderSource, name: str, pretrained: bool, img_size: int | None,
               weights: str | None) -> CLIPPair:
    loaded = load_open_clip(source, name, pretrained, weights, TEXT_FLAG, TEXT_WEIGHTS_FLAG)
    scale = float(loaded.model.logit_scale.detach())
    image = _image(source, name, loaded.model.visual, _embed_dim(loaded.config_name), img_size)
    return CLIPPair(image, OpenCLIPTextEncoder(loaded), scale)  # the text encoder drops .visual


def build_text(source: EncoderSource, name: str, pretrained: bool, weights: str | None) -> OpenCLIPTextEncoder:
    return OpenCLIPTextEncoder(load_open_clip(source, name, pretrained, weights))


def _keeps_no_files(files: Files, *_: Any) -> NoReturn:
    """open_clip ships its tokenizers and model configs, so its towers save no files (``saved_files`` is
    empty) and a restore rebuilds them from the name: files for one are a bug, not something to ignore."""
    raise ValueError(f"open_clip towers keep no files in a checkpoint, got {sorted(files)}")


def counts(source: EncoderSource) -> CLIPCounts:
    import open_clip

    with torch.device("meta"), without_random_init_warning():
        model = open_clip.create_model(source.model, device="meta", load_weights=False, pretrained_text=False)
    image = count_parameters(model.visual)
    return CLIPCounts(image, count_parameters(model) - image, _embed_dim(source.model))


BUILDERS = CLIPFamilyBuilders(
    OPEN_CLIP,
    # open_clip names are never folders: there is nothing whose existence a restore could skip checking.
    resolve=lambda model, pretrained, flag, check_exists: resolve_open_clip(model, pretrained, flag),
    image=build_image, image_from_files=_keeps_no_files, pair=build_pair, pair_from_files=_keeps_no_files,
    text=build_text, text_from_files=_keeps_no_files, weights_location=clip_weights_location, counts=counts,
    weights_folder=False)
