"""reporting/tables.py: the one renderer of report.md, leaderboard.md and the console summary."""
from __future__ import annotations

import math

import pytest

from reporting.tables import (
    Table,
    display_width,
    format_mean_std,
    format_number,
    render_markdown,
    render_text,
)

CJK_TABLE = Table(["class", "recall", "support"],
                  [["股骨柄A", "0.9000", "20"], ["cat_b", "0.7917", "7"], ["髋臼杯", "n/a", "113"]],
                  [False, True, True])


def column_starts(line: str, separator: str) -> list[int]:
    """Display columns at which each ``separator`` of ``line`` stands."""
    starts, width = [], 0
    for ch in line:
        if ch == separator:
            starts.append(width)
        width += display_width(ch)
    return starts


def test_display_width_counts_cjk_twice() -> None:
    assert display_width("cat") == 3 and display_width("股骨柄A") == 7 and display_width("ＡＢ") == 4


def test_markdown_columns_line_up_with_cjk_cells() -> None:
    lines = render_markdown(CJK_TABLE).splitlines()
    assert len(lines) == 2 + len(CJK_TABLE.rows)
    assert len({tuple(column_starts(line, "|")) for line in lines}) == 1  # every '|' under the one above
    assert lines[1] == "|---------|-------:|--------:|"  # numbers right-aligned, names left
    assert lines[2] == "| 股骨柄A | 0.9000 |      20 |"
    assert lines[4] == "| 髋臼杯  |    n/a |     113 |"


def test_markdown_escapes_a_pipe_inside_a_cell() -> None:
    text = render_markdown(Table.labelled(["run", "n"], [["a|b", "1"]]))
    assert text.splitlines()[2] == "| a\\|b |   1 |"  # still two cells


def test_markdown_columns_are_at_least_three_wide() -> None:
    assert render_markdown(Table.labelled(["k", "v"], [["a", "1"]])).splitlines()[1] == "|-----|----:|"


def test_text_columns_line_up_and_right_align_numbers() -> None:
    lines = render_text(CJK_TABLE).splitlines()
    assert lines[0] == "class    recall  support"
    assert lines[1] == "-" * display_width(lines[0])
    # right-aligned numbers end together, under their header
    assert [display_width(line) for line in lines[2:]] == [display_width(lines[0])] * 3
    assert lines[2].startswith("股骨柄A  ") and lines[4].startswith("髋臼杯   ")


def test_rows_must_fit_the_header() -> None:
    with pytest.raises(ValueError, match="3 cells"):
        Table(["a", "b", "c"], [["1", "2"]], [False, True, True])


def test_numbers() -> None:
    assert [format_number(v) for v in (0.84567, 1, None, math.nan, math.inf, True, "0.5")] == \
        ["0.8457", "1.0000", "n/a", "n/a", "n/a", "n/a", "n/a"]
    assert format_mean_std(0.9, 0.02) == "0.9000 ± 0.0200"
    assert format_mean_std(0.9, math.nan) == "0.9000"
    assert format_mean_std(None, 0.02) == "n/a"
