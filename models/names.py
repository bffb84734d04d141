"""Parsing of encoder names and the errors shared by both registries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from utils.errors import UserError, suggest


class UnknownEncoderError(UserError, ValueError):
    """An encoder name that no registry entry matches."""


class WeightsNotFoundError(UserError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, not cached)."""


PRETRAINED_SUFFIXES = ("pretrained", "true")
SCRATCH_SUFFIXES = ("scratch", "false")


@dataclass(frozen=True)
class EncoderName:
    """``resnet50:pretrained`` → base ``resnet50`` with ``pretrained=True``."""

    base: str
    pretrained: bool | None  # None: the registry's default for this family


HF_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class EncoderSource:
    """Where a text encoder or a CLIP tower comes from (loads nothing): ``kind`` is the family's key
    (``clip``, ``cn-clip``, ``siglip`` or ``hf``, models/families.py); a CLIP family's key finds its
    builders in models/clip_builders.py."""

    kind: str
    model: str  # open_clip config name or "hf-hub:<repo>"; HuggingFace hub id or local folder (hf, cn-clip, siglip)
    tag: str | None  # open_clip pretrained tag (None for hf-hub models: the repo holds the weights)
    pretrained: bool

    @property
    def hub_repo(self) -> str | None:
        """The HuggingFace repo an open_clip ``hf-hub:`` model lives in."""
        return self.model[len(HF_HUB_PREFIX):] if self.model.startswith(HF_HUB_PREFIX) else None


def split_suffix(name: str) -> EncoderName:
    """Split a trailing ``:pretrained``/``:true`` or ``:scratch``/``:false`` off ``name``."""
    head, sep, tail = name.rpartition(":")
    if sep and tail.lower() in PRETRAINED_SUFFIXES:
        return EncoderName(head, True)
    if sep and tail.lower() in SCRATCH_SUFFIXES:
        return EncoderName(head, False)
    return EncoderName(name, None)


def unknown_encoder(kind: str, flag: str, name: str, valid: Iterable[str], extra: str = "") -> UnknownEncoderError:
    valid = sorted(valid)
    # A lower cutoff than for flags: encoder names are long and typos often drop a whole part.
    return UnknownEncoderError(f"{flag}: unknown {kind} encoder '{name}'{suggest(name, valid, 0.4)}; valid names: "
                               f"{', '.join(valid)}{extra}")
