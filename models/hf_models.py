"""What the CLIP models built by transformers (``cn-clip:`` Chinese-CLIP, ``siglip:`` SigLIP) share:
a hub name or folder, its config checked to be the family's own, strict loading (never a silent
random init), and the config as files that a checkpoint keeps (so a run folder rebuilds the towers
without the model's folder or the HuggingFace cache)."""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from models.clip_base import CLIPCounts
from models.hf_files import files_as_tensors, write_files
from models.names import EncoderSource, UnknownEncoderError, WeightsNotFoundError, unknown_encoder
from models.weights import hf_from_pretrained, hf_hub_cache, incompatible_weights

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer_config.json"
PATH_STARTS = ("/", "./", "../", "~")


@dataclass(frozen=True)
class HFModelKind:
    """One family's transformers classes (by name: transformers is imported only when a model is built)."""

    prefix: str  # "cn-clip:"
    title: str  # "Chinese-CLIP", in messages
    model_type: str  # what its config.json says
    config_class: str  # "ChineseCLIPConfig"
    model_class: str  # "ChineseCLIPModel"

    def config_type(self) -> Any:
        import transformers

        return getattr(transformers, self.config_class)

    def model_type_class(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class)


def resolve(kind: HFModelKind, model: str, flag: str, aliases: dict[str, str], valid: Iterable[str],
            check_exists: bool = True) -> str:
    """The hub id or folder of ``<prefix><model>`` (loads nothing). A checkpoint restore does not
    ``check_exists``: the run folder carries the files, the model's own folder may be gone."""
    if model in aliases:
        return aliases[model]
    path_like = model.startswith(PATH_STARTS)
    if path_like and check_exists and not Path(model).expanduser().is_dir():
        raise UnknownEncoderError(f"{flag} {kind.prefix}{model}: the folder {model} does not exist")
    if path_like or "/" in model or Path(model).is_dir():  # "org/name" on the hub, or a local folder
        return model
    raise unknown_encoder(kind.title, flag, kind.prefix + model, valid)


def load_config(kind: HFModelKind, target: str, name: str, flag: str, weights_flag: str,
                weights: str | None = None) -> Any:
    """The family's config of a hub model or folder (refused when it is another kind of model)."""
    from transformers import AutoConfig

    # AutoConfig: the family's own config class would read another model's config.json with a warning,
    # as its own type.
    config = hf_from_pretrained(AutoConfig, weights or target, flag, name, weights_flag)
    model_type = getattr(config, "model_type", None)
    if model_type != kind.model_type:
        raise UnknownEncoderError(f"{flag} {name}: not a {kind.title} model (its config.json says model_type "
                                  f"'{model_type}'); for a plain text encoder use hf:<name or folder>")
    return config


def load_pretrained_model(kind: HFModelKind, target: str, name: str, flag: str, weights_flag: str,
                          weights: str | None = None) -> nn.Module:
    """The whole model with its pretrained weights, loaded strictly."""
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()  # a weights-loading bar only clutters log files
    load_config(kind, target, name, flag, weights_flag, weights)
    source = weights or target
    model, info = hf_from_pretrained(kind.model_type_class(), source, flag, name, weights_flag,
                                     output_loading_info=True)
    # transformers fills missing weights with random ones and only warns: refuse instead.
    missing, mismatched = list(info["missing_keys"]), list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise incompatible_weights(weights_flag if weights else flag, Path(source), name,
                                   RuntimeError(f"missing {missing[:5]}, mismatched {mismatched[:5]}"))
    return model


def load_tokenizer(target: str, name: str, flag: str, weights_flag: str, weights: str | None = None) -> Any:
    from transformers import AutoTokenizer

    return hf_from_pretrained(AutoTokenizer, weights or target, flag, name, weights_flag)


def from_files(kind: HFModelKind, files: dict[str, torch.Tensor], loader: Any, needed: str) -> Any:
    """``loader.from_pretrained`` of a checkpoint's saved files (``needed``: the file it reads)."""
    if needed not in files:
        raise WeightsNotFoundError(f"the checkpoint's {kind.title} files lack {needed}")
    with tempfile.TemporaryDirectory(prefix="train_clip_hf_") as folder:
        write_files(files, Path(folder))
        return loader.from_pretrained(folder)  # reads its files completely here: the folder may go


def config_from_files(kind: HFModelKind, files: dict[str, torch.Tensor]) -> Any:
    """The family's config among a checkpoint's saved files."""
    return from_files(kind, files, kind.config_type(), CONFIG_FILE)


def tokenizer_from_files(kind: HFModelKind, files: dict[str, torch.Tensor]) -> Any:
    from transformers import AutoTokenizer

    return from_files(kind, files, AutoTokenizer, TOKENIZER_FILE)


def saved_files(*savables: Any) -> dict[str, torch.Tensor]:
    """The files that ``save_pretrained`` of each of ``savables`` (config, tokenizer, processor) writes."""
    with tempfile.TemporaryDirectory(prefix="train_clip_hf_") as folder:
        for savable in savables:
            savable.save_pretrained(folder)
        return files_as_tensors(Path(folder))


def counts(kind: HFModelKind, source: EncoderSource) -> CLIPCounts:
    """A model's towers, from its cached config.json (each tower with its projection or head: the
    ``vision_model``/``visual_projection`` and ``text_model``/``text_projection`` parameters)."""
    try:
        config = kind.config_type().from_pretrained(source.model, cache_dir=str(hf_hub_cache()), local_files_only=True)
    except OSError:  # not cached: sizes unknown until it is
        return CLIPCounts(None, None, None)
    with torch.device("meta"):
        model = kind.model_type_class()(config)
    counted = {tower: sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefixes))
               for tower, prefixes in (("image", ("vision_model.", "visual_projection.")),
                                       ("text", ("text_model.", "text_projection.")))}
    embed_dim = getattr(config, "projection_dim", None) or config.text_config.projection_size
    return CLIPCounts(counted["image"], counted["text"], int(embed_dim))
