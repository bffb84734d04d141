"""A CSV manifest of images and labels (``--data-csv``): the spreadsheet a hospital exports.

Columns ``path,label`` and optionally ``group`` (the patient). Paths are relative to the CSV's
folder or absolute. The result is the same :class:`ImageFolder` a folder tree gives, with classes
sorted by name and images in the same order, so folds and metrics equal those of the equivalent tree.
"""
from __future__ import annotations

import csv
from pathlib import Path

from data.folder import DataError, ImageFolder

REQUIRED = ("path", "label")


def _read_rows(csv_file: Path, required: tuple[str, ...] = REQUIRED, flag: str = "--data-csv") -> list[dict[str, str]]:
    if not csv_file.is_file():
        raise DataError(f"{flag} {csv_file} does not exist or is not a file")
    try:
        with csv_file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except UnicodeDecodeError:
        raise DataError(f"{flag} {csv_file} is not UTF-8 text") from None
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(f"{flag} {csv_file}, line 1: missing column(s) {', '.join(missing)} (the header must "
                        f"name {','.join(required)}{' and optionally group' if required == REQUIRED else ''}; found: {', '.join(columns) or 'nothing'})")
    return rows


def data_root(data_dir: str | None, data_csv: str | None) -> Path:
    """The folder the run's image paths are relative to: ``--data-dir``, or the CSV manifest's folder."""
    return Path(data_dir) if data_dir else Path(str(data_csv)).parent


def scan_manifest(csv_path: str | Path) -> ImageFolder:
    """The images a CSV manifest lists; a missing file, an empty label or group is an error naming the line."""
    csv_file = Path(csv_path)
    rows = _read_rows(csv_file)
    root = csv_file.parent
    has_groups = bool(rows) and "group" in rows[0]
    samples: list[tuple[str, Path, str | None]] = []
    seen: set[Path] = set()
    for line, row in enumerate(rows, start=2):
        where = f"--data-csv {csv_file}, line {line}"
        label = (row["label"] or "").strip()
        if not label:
            raise DataError(f"{where}: empty label")
        image = root / (row["path"] or "").strip()
        if not (row["path"] or "").strip() or not image.is_file():
            raise DataError(f"{where}: no such image file: {row['path']!r} (paths are relative to the CSV's folder "
                            "or absolute)")
        if image in seen:
            raise DataError(f"{where}: {row['path']} is listed twice")
        seen.add(image)
        group = (row["group"] or "").strip() if has_groups else None
        if has_groups and not group:
            raise DataError(f"{where}: empty group")
        samples.append((label, image, group))
    class_names = sorted({label for label, _, _ in samples})
    if len(class_names) < 2:
        raise DataError(f"--data-csv {csv_file} lists {len(class_names)} class(es); classification needs at "
                        "least two labels")
    index = {name: k for k, name in enumerate(class_names)}
    # The order of a folder scan (class, then path), so folds do not depend on the CSV's row order.
    samples.sort(key=lambda s: (index[s[0]], s[1]))
    return ImageFolder(root=root, class_names=class_names, paths=[s[1] for s in samples],
                       labels=[index[s[0]] for s in samples],
                       groups=[s[2] for s in samples] if has_groups else None)


def manifest_images(csv_path: str | Path, flag: str) -> list[tuple[Path, str]]:
    """(file, its ``path`` cell) of every row of a CSV manifest to classify: a ``path`` column, other
    columns ignored (a training manifest works as it is); a missing file is an error naming the line."""
    csv_file = Path(csv_path)
    found = []
    for line, row in enumerate(_read_rows(csv_file, ("path",), flag), start=2):
        cell = (row["path"] or "").strip()
        image = csv_file.parent / cell
        if not cell or not image.is_file():
            raise DataError(f"{flag} {csv_file}, line {line}: no such image file: {row['path']!r} (paths are "
                            "relative to the CSV's folder or absolute)")
        found.append((image, cell))
    if not found:
        raise DataError(f"{flag} {csv_file} lists no images")
    return found
