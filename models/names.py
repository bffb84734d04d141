"""Parsing of encoder names and the errors shared by both registries."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


class UnknownEncoderError(ValueError):
    """An encoder name that no registry entry matches."""


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, not cached)."""


PRETRAINED_SUFFIXES = ("pretrained", "true")
SCRATCH_SUFFIXES = ("scratch", "false")


@dataclass(frozen=True)
class EncoderName:
    """``resnet50:pretrained`` → base ``resnet50`` with ``pretrained=True``."""

    base: str
    pretrained: bool | None  # None: the registry's default for this family


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
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.4)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UnknownEncoderError(f"{flag}: unknown {kind} encoder '{name}'{hint}; valid names: "
                               f"{', '.join(valid)}{extra}")
