"""The table that ``train_clip.py --list-encoders`` prints: every named encoder, its size, and
whether its pretrained weights are already in the cache that training reads.

Parameters are counted on the ``meta`` device (shapes only, no memory, no initialisation), for the
encoder as the classifier uses it: without the ImageNet classification head, text tower only. CLIP
models (open_clip, Chinese-CLIP, SigLIP) are listed once more as image towers: the same name on both sides
is a pair that keeps its CLIP's projections (models/clip_towers.py). Each CLIP family counts its own
towers (``counts`` in the table of models/clip_builders.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models import chinese_clip, siglip
from models.clip_base import CLIPCounts, count_parameters
from models.clip_builders import clip_builders
from models.image_encoders import IMAGE_ENCODERS, TIMM_PREFIX, build_image_encoder
from models.families import IMAGE, family_of
from models.names import EncoderSource
from models.open_clip_towers import CLIP_ALIASES
from models.text_encoders import HF_ALIASES, resolve_text_encoder, text_weights_location
from models.weights import WeightsLocation, hf_hub_cache

YES, NO, NOT_CACHED = "yes", "no", "not cached"


@dataclass(frozen=True)
class EncoderRow:
    name: str
    family: str
    parameters: int | None  # None: unknown until the model's config is cached
    feature_dim: int | None
    weights: str  # YES (cached or bundled), NO (none exist), NOT_CACHED


def weights_status(location: WeightsLocation | None) -> str:
    if location is None:
        return NO
    return YES if location.cached() is not None else NOT_CACHED


def image_rows() -> list[EncoderRow]:
    rows = []
    for spec in IMAGE_ENCODERS.values():
        with torch.device("meta"):
            encoder = build_image_encoder(spec.name)
        rows.append(EncoderRow(spec.name, spec.family, count_parameters(encoder), encoder.feature_dim,
                               weights_status(spec.weights_location())))
    return rows


def clip_counts() -> dict[str, tuple[EncoderSource, CLIPCounts]]:
    """Every CLIP alias (``clip:``, ``cn-clip:``, ``siglip:``) → its source and tower sizes, counted once."""
    names = ([f"clip:{alias}" for alias in CLIP_ALIASES] + [chinese_clip.PREFIX + a for a in chinese_clip.ALIASES]
             + [siglip.PREFIX + alias for alias in siglip.ALIASES])
    counted = {}
    for name in names:
        source = resolve_text_encoder(name)
        counted[name] = (source, clip_builders(source.kind).counts(source))
    return counted


def clip_rows(counted: dict[str, tuple[EncoderSource, CLIPCounts]], tower: str) -> list[EncoderRow]:
    """One row per CLIP model: its ``tower`` ("image" or "text") as an encoder."""
    return [EncoderRow(name, family_of(name, IMAGE).title, getattr(counts, tower),
                       counts.embed_dim, weights_status(clip_builders(source.kind).weights_location(source)))
            for name, (source, counts) in counted.items()]


def _hf_row(name: str, source: EncoderSource) -> EncoderRow:
    from transformers import AutoConfig, AutoModel

    location = text_weights_location(source)  # None: a local folder (the bundled MiniLM)
    try:
        config = AutoConfig.from_pretrained(source.model, cache_dir=str(hf_hub_cache()), local_files_only=True)
    except OSError:  # not cached: size unknown until it is
        return EncoderRow(name, "HuggingFace", None, None, NOT_CACHED)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    status = YES if location is None else weights_status(location)
    return EncoderRow(name, "HuggingFace", count_parameters(model), int(config.hidden_size), status)


def text_rows(counted: dict[str, tuple[EncoderSource, CLIPCounts]]) -> list[EncoderRow]:
    return clip_rows(counted, "text") + [_hf_row(alias, resolve_text_encoder(alias)) for alias in HF_ALIASES]


def _format_parameters(count: int | None) -> str:
    return "?" if count is None else f"{count / 1e6:.1f}M"


def format_rows(title: str, rows: list[EncoderRow]) -> str:
    header = f"{'name':<25}{'family':<18}{'parameters':>12}{'feature dim':>13}  pretrained weights"
    lines = [title, header, "-" * len(header)]
    for row in rows:
        dim = "?" if row.feature_dim is None else str(row.feature_dim)
        lines.append(f"{row.name:<25}{row.family:<18}{_format_parameters(row.parameters):>12}{dim:>13}  "
                     f"{row.weights}")
    return "\n".join(lines)


def format_encoder_table() -> str:
    counted = clip_counts()
    return "\n".join([
        format_rows("Image encoders (--image-encoder NAME, NAME:pretrained for ImageNet weights)", image_rows()),
        f"  also {TIMM_PREFIX}<any timm model name>, e.g. {TIMM_PREFIX}convnext_nano:pretrained",
        "",
        format_rows("CLIP image towers (--image-encoder NAME, pretrained unless NAME:scratch)",
                    clip_rows(counted, "image")),
        "  also clip:<open_clip model>, clip:hf-hub:<repo>, cn-clip:<hub name or folder>, siglip:<hub name or folder>",
        "  pairs: the same NAME as --image-encoder and --text-encoder (e.g. clip:ViT-B/32 with clip:ViT-B/32) is",
        "  one CLIP model, loaded once, keeping its own projections and logit scale (and SigLIP's logit bias;",
        "  zero-shot at epoch 0)",
        "",
        format_rows("Text encoders (--text-encoder NAME, NAME:scratch for random weights)", text_rows(counted)),
        "  also clip:<open_clip model>, clip:hf-hub:<repo>, cn-clip:<hub name or folder>, "
        "siglip:<hub name or folder>, hf:<HuggingFace name or folder>",
        "",
        f"pretrained weights: yes = in the cache ({hf_hub_cache()} or TORCH_HOME), not cached = fetch them "
        "with 'python -m models.download NAME', no = none are published",
    ])
