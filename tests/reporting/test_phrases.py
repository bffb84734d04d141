"""The one table of phrases: every phrase in both languages, with the same fields (so no number is dropped)."""
from __future__ import annotations

import string

import pytest

from reporting.fonts import needs_cjk
from reporting.methods_phrases import METHODS_PHRASES
from reporting.phrases import LEADERBOARD_PHRASES, PHRASES, REPORT_PHRASES, Phrases, report_languages

# Chinese phrases that name the run's recorded English rule in Chinese words instead of quoting it.
TRANSLATED_FIELDS = {"op_rule_inner", "op_rule_oof"}


def fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_no_phrase_is_defined_twice() -> None:
    parts = (REPORT_PHRASES, LEADERBOARD_PHRASES, METHODS_PHRASES)
    assert len(PHRASES) == sum(map(len, parts))


@pytest.mark.parametrize("key", sorted(set(PHRASES) - TRANSLATED_FIELDS))
def test_both_languages_of_a_phrase_carry_the_same_fields(key: str) -> None:
    english, chinese = PHRASES[key]
    assert fields(english) == fields(chinese)
    words = chinese
    for name in fields(chinese):
        words = words.replace("{" + name + "}", "")
    # Chinese unless the phrase is punctuation, a field, or a name kept as it is (F1, the with_ci pattern).
    assert needs_cjk([words]) or not any(ch.isalpha() for ch in words) or words == english, key


def test_phrases_format_and_languages_are_chosen() -> None:
    assert Phrases("zh")("fold_column", fold=3) == "第 3 折" and Phrases()("fold_column", fold=3) == "fold 3"
    assert Phrases("zh").join(["a", "b"]) == "a、b" and Phrases("en").join(["a", "b"]) == "a, b"
    assert report_languages("both") == ("en", "zh") and report_languages("zh") == ("zh",)
