"""Chinese class names are readable in every picture of a run, on a machine without CJK system fonts.

The machine is simulated by making the system-font lookup find nothing: the font must then come from
the package requirements.txt installs, and every character of every label must have a glyph.
"""
from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from reporting import fonts, plots, saliency
from reporting.report import write_plots
from tests.helpers import run_summary
from tests.reporting.test_report import fake_histories, fake_predictions, fake_summary

CHINESE_CLASSES = ["股骨柄A", "股骨柄B", "髋臼杯（骨水泥型）"]


def label_fonts(text: matplotlib.text.Text) -> list[Path]:
    """The font files of a text's family list, in matplotlib's glyph-by-glyph fallback order."""
    properties = text.get_fontproperties()
    files = []
    for family in properties.get_family():
        single = properties.copy()
        single.set_family(family)
        files.append(Path(font_manager.findfont(single, fallback_to_default=False)))
    return files


@functools.cache
def font_file(path: Path) -> FT2Font:
    return FT2Font(str(path))


def missing_glyphs(figure: Figure) -> dict[str, list[str]]:
    """Label → its characters that no font of its fallback chain has (``get_char_index(c) == 0``)."""
    missing = {}
    for text in figure.findobj(matplotlib.text.Text):
        label = text.get_text()
        chain = [font_file(path) for path in label_fonts(text)] if label.strip() else []
        absent = [c for c in label if not c.isspace() and all(font.get_char_index(ord(c)) == 0 for font in chain)]
        if absent:
            missing[label] = absent
    return missing


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure the plot and gallery code saves, in order (they are still written)."""
    figures: list[Figure] = []
    original = plots.save_png

    def recording_save(figure: Figure, out_path):
        figures.append(figure)
        return original(figure, out_path)

    monkeypatch.setattr(plots, "save_png", recording_save)
    monkeypatch.setattr(saliency, "save_png", recording_save)
    return figures


@pytest.fixture
def no_system_cjk_font(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fonts, "system_cjk_family", lambda: None)


def chinese_summary() -> tuple[dict, np.ndarray, np.ndarray]:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs, test=True)
    summary["class_names"] = CHINESE_CLASSES
    return summary, y, probs


def draw_every_picture(tmp_path: Path) -> list[Path]:
    """What a run draws: learning curves, confusion matrices, ROC, reliability, and a gallery picture
    captioned as training/gallery.py captions it."""
    summary, y, probs = chinese_summary()
    made = write_plots(tmp_path, run_summary(**summary), fake_histories(), y, probs)
    image = np.full((32, 32, 3), 90, dtype=np.uint8)
    caption = f"{CHINESE_CLASSES[0]}/病例007.png (fold 1)\ntrue {CHINESE_CLASSES[0]}, predicted {CHINESE_CLASSES[2]} (p = 0.83)"
    gallery = saliency.save_overlay(tmp_path / "gallery.png", image, np.linspace(0, 1, 32 * 32).reshape(32, 32),
                                    caption)
    return [tmp_path / path for path in made.values()] + [gallery]


def test_every_picture_has_every_glyph_of_chinese_labels_from_the_bundled_font(
        tmp_path: Path, drawn: list[Figure], no_system_cjk_font: None) -> None:
    bundled = fonts.bundled_cjk_font_file()
    assert bundled is not None, "the CJK font package of requirements.txt is not installed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = draw_every_picture(tmp_path)
    glyph_warnings = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not glyph_warnings
    assert all(path.is_file() for path in paths)
    assert len(drawn) == 6  # learning curves, 2 confusion matrices, ROC, reliability, gallery
    for figure in drawn:
        assert not missing_glyphs(figure)
    shown = {text.get_text() for figure in drawn for text in figure.findobj(matplotlib.text.Text)}
    for name in CHINESE_CLASSES:  # the class names really are on the pictures that show classes
        assert name in shown and any(name in s and "AUC" in s for s in shown), name
        labels = [t for t in drawn[1].findobj(matplotlib.text.Text) if t.get_text() == name]
        # The fallback is the bundled font's family (matplotlib may hold another copy of that file, registered
        # by an earlier test of the process) and the file it uses has every character of the name.
        used = [font_file(label_fonts(t)[-1]) for t in labels]
        assert used and all(font.family_name == font_file(bundled).family_name for font in used)
        assert all(font.get_char_index(ord(c)) != 0 for font in used for c in name)
    assert any("病例007" in s for s in shown)


def test_without_any_cjk_font_the_check_finds_the_boxes_and_one_warning_says_so(
        tmp_path: Path, drawn: list[Figure], no_system_cjk_font: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The planted fault (no font at all) is what the test above would catch."""
    monkeypatch.setattr(fonts, "bundled_cjk_family", lambda: None)
    fonts._warn_no_cjk_font.cache_clear()
    logger = logging.getLogger("train_clip")
    monkeypatch.setattr(logger, "propagate", True)  # let caplog see it whatever setup_logging did before
    summary, y, probs = chinese_summary()
    with caplog.at_level(logging.WARNING, logger="train_clip"):
        plots.plot_confusion_matrix(summary["oof"]["confusion_matrix"], CHINESE_CLASSES, tmp_path / "cm.png")
        plots.plot_roc_curves(y, probs, CHINESE_CLASSES, tmp_path / "roc.png")
    fonts._warn_no_cjk_font.cache_clear()
    missing = missing_glyphs(drawn[0])
    assert CHINESE_CLASSES[0] in missing and missing[CHINESE_CLASSES[0]] == list("股骨柄")
    messages = {record.getMessage() for record in caplog.records}
    assert len(messages) == 1 and "pylopdf-fonts-zh-cn" in messages.pop()


def test_a_system_cjk_font_is_preferred_and_latin_labels_keep_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fonts.needs_cjk(["cat_a", "股骨柄A"]) and not fonts.needs_cjk(["cat_a", "Hüfte"])
    assert fonts.font_settings(["cat_a"]) == {"font.family": [fonts.BASE_FONT]}
    monkeypatch.setattr(fonts, "_known_cjk_family", lambda: "WenQuanYi Micro Hei")
    monkeypatch.setattr(fonts, "bundled_cjk_family", lambda: pytest.fail("the bundled font was registered"))
    assert fonts.font_settings(["股骨柄A"]) == {"font.family": [fonts.BASE_FONT, "WenQuanYi Micro Hei"]}


def test_registering_the_bundled_font_leaves_the_matplotlib_configuration_alone(no_system_cjk_font: None) -> None:
    before = dict(matplotlib.rcParams)
    family = fonts.bundled_cjk_family()
    assert family == "Noto Sans SC"
    assert dict(matplotlib.rcParams) == before
    assert any(Path(entry.fname) == fonts.bundled_cjk_font_file() for entry in font_manager.fontManager.ttflist)
