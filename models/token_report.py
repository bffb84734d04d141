"""How a tokenizer reads a text: token counts for the start-up warnings (:mod:`models.text_checks`).

Every text encoder has ``token_report(text) -> TokenReport``; this module holds the report and the
HuggingFace tokenizers' way of filling it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenReport:
    """How a tokenizer reads one text, before any truncation (the start-up warnings use it).

    ``n_tokens`` counts the special tokens too (what must fit ``context_length``); ``n_unknown`` the
    tokens the model cannot have learned: the unknown token, or a byte piece that is not a whole
    character (byte-level BPE and SentencePiece byte fallback spell unseen characters byte by byte);
    ``n_content`` the tokens without the special ones.
    """

    n_tokens: int
    n_unknown: int
    n_content: int


REPLACEMENT_CHARACTER = "\ufffd"  # what decoding a partial UTF-8 byte sequence yields


def is_byte_piece(piece: str, text: str) -> bool:
    """A token decoded alone that is not a whole character: part of a character's UTF-8 bytes."""
    return REPLACEMENT_CHARACTER in piece and REPLACEMENT_CHARACTER not in text


def hf_token_report(tokenizer: Any, text: str) -> TokenReport:
    """:class:`TokenReport` of a HuggingFace tokenizer: WordPiece's unknown token, and byte pieces of
    byte-level BPE (RoBERTa, GPT-2) and SentencePiece byte fallback (``<0xE4>``)."""
    ids = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    unknown_id = tokenizer.unk_token_id
    special = set(tokenizer.all_special_ids) - {unknown_id}  # an unknown token is content the model lost
    content = [i for i in ids if i not in special]
    unknown = sum(1 for i in content if i == unknown_id or is_byte_piece(tokenizer.decode([i]), text))
    return TokenReport(n_tokens=len(ids), n_unknown=unknown, n_content=len(content))
