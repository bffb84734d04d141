"""report.md's gallery of where the model looks: which out-of-fold images to show, and the section.

Per true class, the most confident correct and the most confident wrong out-of-fold prediction
(from ``oof_predictions.csv``): a handful of images, so drawing them stays cheap. The pictures
are drawn by ``training/gallery.py`` (it needs the data and the fold models) and listed in
``plots/gallery/gallery.json``, which :func:`gallery_section` turns into Markdown.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from reporting.phrases import ENGLISH, Phrases
from utils.io import read_json, write_json
from utils.logging_setup import get_logger
from utils.run_dir import RunDir

log = get_logger(__name__)

CORRECT, WRONG = "correct", "wrong"


@dataclass(frozen=True)
class GalleryCase:
    """One out-of-fold image of the gallery and, once drawn, its picture."""

    true_class: str
    kind: str  # CORRECT or WRONG
    path: str  # as in oof_predictions.csv (relative to the data folder)
    fold: int  # the fold whose model validated it
    predicted_class: str
    probability: float  # of the predicted class
    picture: str = ""  # PNG path relative to the run folder


def choose_cases(rows: Sequence[dict[str, str]], class_names: Sequence[str]) -> list[GalleryCase]:
    """Per class (in ``class_names`` order): the most confident correct, then the most confident wrong."""
    cases = []
    for name in class_names:
        own = [row for row in rows if row["true_class"] == name]
        for kind in (CORRECT, WRONG):
            candidates = [row for row in own if (row["predicted_class"] == name) == (kind == CORRECT)]
            if candidates:
                best = max(candidates, key=lambda row: float(row[f"prob_{row['predicted_class']}"]))
                cases.append(GalleryCase(name, kind, best["path"], int(best["fold"]), best["predicted_class"],
                                         float(best[f"prob_{best['predicted_class']}"])))
    return cases


def read_oof_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Gallery:
    method: str  # the heatmap method (--explain-method)
    cases: list[GalleryCase]

    def write(self, run: RunDir) -> None:
        write_json(run.gallery_manifest, {"method": self.method,
                                          "cases": [dataclasses.asdict(case) for case in self.cases]})

    @classmethod
    def read(cls, run: RunDir) -> Gallery | None:
        """The drawn gallery of a run, or None when it has none."""
        if not run.gallery_manifest.is_file():
            return None
        try:
            document: Any = read_json(run.gallery_manifest, "gallery list")
            return cls(document["method"], [GalleryCase(**entry) for entry in document["cases"]])
        except (KeyError, TypeError, ValueError) as exc:  # torn or hand-edited: the report goes on without it
            log.warning("Gallery list %s is unreadable (%s); report.md shows no gallery", run.gallery_manifest, exc)
            return None


def _text(text: str) -> str:
    """Text for a Markdown table cell: a ``|`` (allowed in class and file names) would end the cell."""
    return text.replace("|", "\\|")


def _cell(case: GalleryCase | None, t: Phrases) -> str:
    if case is None:
        return "—"
    # <...> around the link: file names may hold spaces, which end a plain Markdown link.
    return (f"![{t('gallery_' + case.kind)}](<{_text(case.picture)}>)<br>"
            + t("gallery_cell", path=_text(case.path), fold=case.fold, predicted=_text(case.predicted_class),
                p=case.probability))


def gallery_section(run: RunDir, t: Phrases = ENGLISH) -> list[str]:
    """The Markdown lines of the gallery (none when no gallery was drawn)."""
    gallery = Gallery.read(run)
    if gallery is None or not gallery.cases:
        return []
    cases = gallery.cases
    lines = ["", t("gallery_heading"), "", t("gallery_note", method=gallery.method), "", t("gallery_header"),
             "|---|---|---|"]
    for name in dict.fromkeys(case.true_class for case in cases):
        found = {case.kind: case for case in cases if case.true_class == name}
        lines.append(f"| {_text(name)} | {_cell(found.get(CORRECT), t)} | {_cell(found.get(WRONG), t)} |")
    return lines
