"""The one table renderer: Markdown for report.md and leaderboard.md, plain columns for the console.

Both renderings pad every cell to its column's width in terminal columns, where a CJK character
takes two (class and run names may be Chinese), so a Markdown table also reads well as text.
Only the standard library is imported (the leaderboard's ``--status`` must start fast).
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

MIN_MARKDOWN_WIDTH = 3  # a Markdown separator cell needs three dashes
COLUMN_GAP = "  "  # between console columns
NOT_A_NUMBER = "n/a"


@dataclass(frozen=True)
class Table:
    """Cells as text; ``right[i]`` right-aligns column ``i`` (numbers), otherwise it is left-aligned."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    right: Sequence[bool]

    @classmethod
    def labelled(cls, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
        """A table whose first column names the row and whose other columns hold numbers."""
        return cls(header, rows, [False] + [True] * (len(header) - 1))

    def __post_init__(self) -> None:
        if any(len(row) != len(self.header) for row in self.rows) or len(self.right) != len(self.header):
            raise ValueError(f"every row and the alignment need {len(self.header)} cells")


def display_width(text: str) -> int:
    """Terminal columns of ``text``: wide and full-width (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - display_width(text))
    return fill + text if right else text + fill


def _widths(lines: Sequence[Sequence[str]], minimum: int = 0) -> list[int]:
    return [max(minimum, *(display_width(cell) for cell in column)) for column in zip(*lines)]


def _markdown_cell(text: str) -> str:
    # A '|' inside a cell would end it.
    return text.replace("|", "\\|")


def render_markdown(table: Table) -> str:
    """A Markdown table whose columns also line up in a terminal (headers are left-aligned)."""
    header = [_markdown_cell(h) for h in table.header]
    rows = [[_markdown_cell(c) for c in row] for row in table.rows]
    widths = _widths([header, *rows], MIN_MARKDOWN_WIDTH)
    rule = ["-" * (w + 1) + ":" if right else "-" * (w + 2) for w, right in zip(widths, table.right)]
    lines = ["| " + " | ".join(_pad(cell, w, False) for cell, w in zip(header, widths)) + " |",
             "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(_pad(cell, w, r) for cell, w, r in zip(row, widths, table.right)) + " |"
              for row in rows]
    return "\n".join(lines)


def render_text(table: Table) -> str:
    """Plain columns under a rule, for a log or a console (headers aligned like their column)."""
    widths = _widths([table.header, *table.rows])
    lines = [COLUMN_GAP.join(_pad(cell, w, r) for cell, w, r in zip(row, widths, table.right)).rstrip()
             for row in (table.header, *table.rows)]
    lines.insert(1, "-" * (sum(widths) + len(COLUMN_GAP) * (len(widths) - 1)))
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_number(value: Any) -> str:
    """Four decimals; ``n/a`` for what is not a finite number (null, NaN: e.g. an undefined AUC)."""
    return f"{value:.4f}" if _is_number(value) else NOT_A_NUMBER


def format_mean_std(mean: Any, std: Any) -> str:
    """``mean ± std``; the mean alone when the std is undefined, ``n/a`` when the mean is."""
    if not _is_number(mean):
        return NOT_A_NUMBER
    return f"{mean:.4f} ± {std:.4f}" if _is_number(std) else f"{mean:.4f}"


def format_interval(interval: Any) -> str:
    """``[low, high]`` with four decimals; ``n/a`` when there is none or a bound is not a number."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2 and all(map(_is_number, interval))):
        return NOT_A_NUMBER
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]"
