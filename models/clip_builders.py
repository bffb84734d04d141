"""The table of the CLIP families' builders, keyed by family key (docs/design.md §3).

``clip`` (open_clip), ``cn-clip`` (Chinese-CLIP) and ``siglip`` (SigLIP) each implement the operations of
:class:`models.clip_base.CLIPFamilyBuilders` in their own module; building a tower, a pair or a text
encoder, rebuilding one from a checkpoint's files, finding the cached weights and counting parameters
all ask this table (``clip_builders(source.kind).image(...)``) instead of comparing keys. The table
lives apart from :mod:`models.families` so that naming a family stays free of torch and transformers.
"""
from __future__ import annotations

from models import chinese_clip, open_clip_towers, siglip
from models.clip_base import CLIPFamilyBuilders

CLIP_BUILDERS: dict[str, CLIPFamilyBuilders] = {
    builders.family.key: builders for builders in (open_clip_towers.BUILDERS, chinese_clip.BUILDERS, siglip.BUILDERS)}


def clip_builders(key: str) -> CLIPFamilyBuilders:
    """The builders of the CLIP family ``key`` (an ``EncoderSource.kind`` or ``EncoderFamily.key``)."""
    try:
        return CLIP_BUILDERS[key]
    except KeyError:
        raise KeyError(f"'{key}' is not a CLIP family; the CLIP families are {', '.join(CLIP_BUILDERS)}") from None
