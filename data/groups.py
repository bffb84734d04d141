"""Which group (patient) each image belongs to: from a groups file, a path pattern or DICOM PatientID.

Folds made with groups keep a patient's images on one side (docs/design.md §10). A CSV manifest's
``group`` column is read with the manifest (``data/manifest.py``); the sources here are for the
other cases, and exactly one source may be used.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from data.dicom import read_patient_id
from data.folder import DataError, ImageFolder, display_path

SHOWN = 5  # files named in an error before "and N more"


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def assign_groups(images: ImageFolder, groups_file: str | None, group_regex: str | None,
                  group_by: str) -> ImageFolder:
    """``images`` with their groups from the one source given; unchanged when none is."""
    wanted = [name for name, used in (("--groups-file", groups_file), ("--group-regex", group_regex),
                                      ("--group-by dicom", group_by == "dicom")) if used]
    if not wanted:
        return images
    if images.groups is not None:
        raise DataError(f"{wanted[0]}: the CSV manifest already has a group column; use one source of groups")
    if groups_file:
        groups = groups_from_file(images, Path(groups_file))
    elif group_regex:
        groups = groups_from_regex(images, group_regex)
    else:
        groups = groups_from_dicom(images)
    return ImageFolder(images.root, images.class_names, images.paths, images.labels, groups)


def groups_from_regex(images: ImageFolder, pattern: str) -> list[str]:
    """The first capture group (or the whole match) of ``pattern`` searched in each image's path
    relative to the data folder, e.g. ``(P\\d+)_`` in ``股骨柄A/P007_left.png`` → ``P007``."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--group-regex {pattern!r} is not a valid regular expression: {exc}") from None
    groups: list[str] = []
    unmatched: list[str] = []
    for path in images.paths:
        shown = display_path(path, images.root)
        match = regex.search(shown)
        if match is None:
            unmatched.append(shown)
            continue
        groups.append(match.group(1) if regex.groups else match.group(0))
    if unmatched:
        raise DataError(f"--group-regex {pattern!r} matches no part of {len(unmatched)} path(s): "
                        f"{_listed(unmatched)}")
    return groups


def groups_from_file(images: ImageFolder, groups_file: Path) -> list[str]:
    """Groups from a CSV with columns ``path,group`` (paths as in folds.json: relative to the data
    folder, or absolute)."""
    try:
        with groups_file.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--groups-file {groups_file}: cannot read it ({exc})") from None
    if not rows or not {"path", "group"} <= set(rows[0]):
        raise DataError(f"--groups-file {groups_file}: expected a header line with the columns path,group")
    group_of: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if not (row["group"] or "").strip():
            raise DataError(f"--groups-file {groups_file}, line {line}: empty group")
        path = Path(row["path"] or "")
        key = display_path(path, images.root) if path.is_absolute() else path.as_posix()
        group_of[key] = row["group"].strip()
    shown = [display_path(p, images.root) for p in images.paths]
    missing = [name for name in shown if name not in group_of]
    if missing:
        raise DataError(f"--groups-file {groups_file} gives no group for {len(missing)} image(s): "
                        f"{_listed(missing)}")
    return [group_of[name] for name in shown]


def groups_from_dicom(images: ImageFolder) -> list[str]:
    """Each DICOM file's PatientID."""
    groups: list[str | None] = [read_patient_id(path) for path in images.paths]
    missing = [display_path(p, images.root) for p, g in zip(images.paths, groups) if not g]
    if missing:
        raise DataError(f"--group-by dicom: {len(missing)} file(s) are not DICOM or have no PatientID: "
                        f"{_listed(missing)}")
    return [g for g in groups if g]
