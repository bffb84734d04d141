"""Start-up checks of the class descriptions against the text encoder's tokenizer.

Two mistakes cost a whole study without a word from the libraries: a description longer than the
encoder's context is cut off silently, and text in a script the tokenizer does not cover (Chinese
into CLIP's or MiniLM's English tokenizer) reaches the model as unknown tokens or byte pieces it
never learned. Each check gives one line for the log, before anything trains.
"""
from __future__ import annotations

import unicodedata
from typing import Protocol, Sequence

from models.token_report import TokenReport

# A description is "not covered" when at least half of its content tokens are unknown or byte pieces.
# Measured with this project's tokenizers: fully Chinese descriptions are 88-100% byte pieces for
# CLIP's BPE and 70-77% [UNK] for MiniLM's WordPiece, while an English sentence that names one
# two-character Chinese term ("a short stem called 短柄 in reports") is 32-40% byte pieces for CLIP
# (each Chinese character becomes 2-3 byte tokens). A third would flag that sentence; half does not.
UNCOVERED_SHARE = 0.5
EXCERPT_CHARS = 24
CHINESE_ENCODERS = "--text-encoder bert-base-chinese (or chinese-roberta-wwm-ext, or cn-clip:* for CLIP towers)"


class ReportsTokens(Protocol):
    """What the checks need of a text encoder (every encoder of :mod:`models.text_encoders` has it)."""

    context_length: int

    def token_report(self, text: str) -> TokenReport: ...


def is_uncovered(report: TokenReport) -> bool:
    return report.n_content > 0 and report.n_unknown >= UNCOVERED_SHARE * report.n_content


def has_chinese(text: str) -> bool:
    return any(unicodedata.name(ch, "").startswith("CJK UNIFIED IDEOGRAPH") for ch in text)


def excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def too_long_line(class_name: str, text: str, report: TokenReport, context_length: int, encoder_name: str) -> str:
    return (f"Class '{class_name}': a description is {report.n_tokens} tokens long, more than the "
            f"{context_length} that --text-encoder {encoder_name} reads; it is truncated to its first "
            f"{context_length} tokens (shorten it or split it into several descriptions): \"{excerpt(text)}\"")


def uncovered_line(encoder_name: str, texts: Sequence[tuple[str, str, TokenReport]]) -> str:
    """One line for every description the tokenizer does not cover: (class, text, report) each."""
    classes = list(dict.fromkeys(name for name, _, _ in texts))
    unknown = sum(report.n_unknown for _, _, report in texts)
    content = sum(report.n_content for _, _, report in texts)
    if any(has_chinese(text) for _, text, _ in texts):
        advice = f"for Chinese descriptions use {CHINESE_ENCODERS}, or write them in English"
    else:
        advice = "use a text encoder whose tokenizer reads their language"
    return (f"--text-encoder {encoder_name} does not cover the script of {len(texts)} description(s) of "
            f"class(es) {', '.join(classes)}: {100 * unknown / content:.0f}% of their tokens are unknown or "
            f"byte pieces the model never learned; {advice}")


def text_warnings(encoder: ReportsTokens, encoder_name: str, class_names: Sequence[str],
                  class_texts: Sequence[Sequence[str]]) -> list[str]:
    """One line per description longer than the encoder's context, and one line for all descriptions
    in a script its tokenizer does not cover (``class_texts[k]`` are the descriptions of class k)."""
    lines: list[str] = []
    uncovered: list[tuple[str, str, TokenReport]] = []
    for name, texts in zip(class_names, class_texts):
        for text in texts:
            report = encoder.token_report(text)
            if report.n_tokens > encoder.context_length:
                lines.append(too_long_line(name, text, report, encoder.context_length, encoder_name))
            if is_uncovered(report):
                uncovered.append((name, text, report))
    if uncovered:
        lines.append(uncovered_line(encoder_name, uncovered))
    return lines
