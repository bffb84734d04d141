"""Fonts of the pictures: a CJK font for Chinese (and other CJK) labels, on any machine.

Matplotlib's default font (DejaVu Sans) has no CJK glyphs. A picture whose texts need them gets a
CJK font as a fallback family (matplotlib 3.6+ falls back glyph by glyph along ``font.family``,
so Latin text keeps the default font): an installed system font when there is one (Noto Sans CJK,
WenQuanYi, ...), otherwise the Noto Sans SC file that ``pip install -r requirements.txt`` brings
(the ``pylopdf-fonts-zh-cn`` package), registered with matplotlib's font manager by its path for
this process only. Nothing is written to the user's matplotlib configuration or font cache and
nothing is downloaded. Only when neither exists do labels show as boxes, and one warning says so.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import matplotlib
from matplotlib import font_manager

from utils.logging_setup import get_logger

log = get_logger(__name__)

# Families that cover Chinese, in order of preference (Linux packages first, then macOS/Windows).
CJK_FONT_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans SC", "Source Han Sans SC",
    "Source Han Sans CN", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback",
    "AR PL UMing CN", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Arial Unicode MS",
)
# File-name fragments (lower case, no '-' or '_') of the font files of those families.
CJK_FONT_FILE_HINTS = ("notosanscjk", "notoserifcjk", "notosanssc", "sourcehansans", "wqy", "droidsansfallback",
                       "uming", "ukai", "simhei", "msyh", "pingfang", "arialuni")
# The font that comes with requirements.txt: (package, file inside it). Noto Sans SC (SIL OFL) covers
# every ideograph of GB 2312 and of the CJK Unified Ideographs block U+4E00-U+9FA5.
BUNDLED_CJK_FONT = ("pylopdf_fonts_zh_cn", "NotoSansSC-Regular.otf")
BASE_FONT = "DejaVu Sans"  # matplotlib's bundled default: always present


def needs_cjk(texts: Iterable[str]) -> bool:
    """Whether any text holds a character from the CJK blocks (DejaVu Sans has none of them)."""
    return any(_is_cjk(ch) for text in texts for ch in text)


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (0x2E80 <= code <= 0x9FFF      # radicals, punctuation, kana, CJK unified ideographs
            or 0xAC00 <= code <= 0xD7AF   # Hangul syllables
            or 0xF900 <= code <= 0xFAFF   # compatibility ideographs
            or 0xFF00 <= code <= 0xFFEF   # full-width forms
            or 0x20000 <= code <= 0x3FFFF)  # extension ideographs


def find_cjk_font() -> str | None:
    """The family of the CJK font the pictures use: a system one first, else the bundled one; None without either."""
    return system_cjk_family() or bundled_cjk_family()


def system_cjk_family() -> str | None:
    """The first family of :data:`CJK_FONT_FAMILIES` installed on this machine, or None.

    matplotlib's font list is a cache built when it first ran: a CJK font installed later is not in
    it, so such fonts are looked for on disk by file name and registered.
    """
    family = _known_cjk_family()
    if family is None and _register_system_cjk_files():
        family = _known_cjk_family()
    return family


def _known_cjk_family() -> str | None:
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return next((family for family in CJK_FONT_FAMILIES if family in installed), None)


@functools.cache
def _register_system_cjk_files() -> bool:
    # Cached: the installed fonts do not change during a run, and scanning takes a while.
    found = False
    for path in font_manager.findSystemFonts():
        name = Path(path).name.lower().replace("-", "").replace("_", "")
        if any(hint in name for hint in CJK_FONT_FILE_HINTS):
            with contextlib.suppress(Exception):  # an unreadable font file is just not used
                font_manager.fontManager.addfont(path)
                found = True
    return found


def bundled_cjk_font_file() -> Path | None:
    """The CJK font file of :data:`BUNDLED_CJK_FONT`, located without importing its package; None when absent."""
    package, file_name = BUNDLED_CJK_FONT
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / file_name
    return path if path.is_file() else None


@functools.cache
def bundled_cjk_family() -> str | None:
    """Register the bundled CJK font with matplotlib's font manager (this process only); its family, or None."""
    path = bundled_cjk_font_file()
    if path is None:
        return None
    font_manager.fontManager.addfont(str(path))
    return font_manager.FontProperties(fname=path).get_name()


def font_settings(texts: Iterable[str]) -> dict[str, Any]:
    """rcParams for a picture whose labels are ``texts``: a CJK fallback font when they need one."""
    if not needs_cjk(texts):
        return {"font.family": [BASE_FONT]}
    family = find_cjk_font()
    if family is None:
        _warn_no_cjk_font()
        return {"font.family": [BASE_FONT]}
    return {"font.family": [BASE_FONT, family]}


@functools.cache
def _warn_no_cjk_font() -> None:
    # Cached so a run that draws several pictures says it once, not once per picture.
    package = BUNDLED_CJK_FONT[0].replace("_", "-")
    log.warning("No CJK font found: Chinese class names in the plots show as boxes; the font comes with "
                "'pip install -r requirements.txt' (package %s), or install a system one "
                "(Debian/Ubuntu: apt-get install fonts-noto-cjk)", package)


@contextlib.contextmanager
def picture_fonts(texts: Iterable[str]) -> Iterator[None]:
    """The fonts of one picture whose texts are ``texts``, for its duration only.

    Only when no CJK font exists are matplotlib's missing-glyph warnings silenced (the one warning
    above said it); with a font a missing glyph still warns, which the tests watch for.
    """
    texts = list(texts)
    settings = font_settings(texts)
    with matplotlib.rc_context(settings), warnings.catch_warnings():
        if needs_cjk(texts) and len(settings["font.family"]) == 1:
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield
