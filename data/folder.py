"""Scanning a folder-per-class image tree."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from data.dicom import DICOM_SUFFIX, is_dicom_file
from utils.errors import UserError
from utils.run_dir import RunDir

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", DICOM_SUFFIX})


class DataError(UserError, ValueError):
    """The data on disk cannot be used as given; the message is meant for the user."""


@dataclass(frozen=True)
class ImageFolder:
    """The images of a data directory: parallel lists of paths and labels, and the class names."""

    root: Path
    class_names: list[str]
    paths: list[Path]
    labels: list[int]
    # The group (patient) of each image, when known: folds then never split a group.
    groups: list[str] | None = None

    def subset(self, keep: list[int]) -> "ImageFolder":
        """The images at positions ``keep``, in that order."""
        return ImageFolder(self.root, self.class_names, [self.paths[i] for i in keep],
                           [self.labels[i] for i in keep], self.groups_of(keep))

    def groups_of(self, indices: Sequence[int]) -> list[str] | None:
        """The group (patient) of each image at ``indices``, or None when groups are not known."""
        return None if self.groups is None else [self.groups[i] for i in indices]

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as text every file and terminal can hold.

    A file name that is not valid UTF-8 reaches Python with its odd bytes as surrogates, which no
    UTF-8 file can store: they are shown as ``\\xNN`` escapes instead (readable, and stable, so a
    resumed run compares equal).
    """
    return printable(_relative_or_absolute(path, root))


def _relative_or_absolute(path: Path, root: Path) -> str:
    """A CSV manifest may name images outside its folder: those are shown by their absolute path."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogates) as ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def undecodable_names(paths: list[Path], root: Path) -> list[str]:
    """The files of ``paths`` whose names are not valid UTF-8, in their displayed form."""
    shown = ((display_path(p, root), _relative_or_absolute(p, root)) for p in paths)
    return [display for display, raw in shown if display != raw]


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _is_image(path: Path) -> bool:
    """An image by its suffix, or a suffix-less DICOM file (as PACS exports write them)."""
    if not path.is_file() or _is_hidden(path):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS or (path.suffix == "" and is_dicom_file(path))


def find_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, extension case-insensitive), sorted; hidden files
    and anything inside hidden folders are left out."""
    return sorted(p for p in folder.rglob("*")
                  if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_image_folder(data_dir: str | Path) -> ImageFolder:
    """Collect the images below ``data_dir``, one sub-folder per class.

    Class folders are sorted by name (so labels do not depend on the file system's order);
    images are searched recursively inside each class folder, with extensions compared
    case-insensitively; hidden files and folders are ignored. Raises :class:`DataError` when
    the folder is missing, has fewer than two classes, or a class folder holds no image.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    if not class_dirs:
        raise DataError(f"--data-dir {root} holds no class folders (expected one sub-folder of images "
                        "per class)")
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for class_dir in class_dirs:
        if RunDir(class_dir).config.is_file() and RunDir(class_dir).folds.is_file():
            raise DataError(f"--data-dir {root}: {class_dir.name} is a train_clip run folder, not a class; "
                            "move it out of the data folder")
    for label, class_dir in enumerate(class_dirs):
        images = find_images(class_dir)
        if not images:
            empty.append(class_dir.name)
        paths.extend(images)
        labels.extend([label] * len(images))
    if empty:
        raise DataError(f"--data-dir {root}: class folder(s) with no image: {', '.join(empty)} "
                        f"(image types: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if len(class_dirs) < 2:
        raise DataError(f"--data-dir {root} holds only one class ({class_dirs[0].name}); "
                        "classification needs at least two class folders")
    return ImageFolder(root=root, class_names=[d.name for d in class_dirs], paths=paths, labels=labels)


def list_images(images: Path, flag: str = "--images") -> list[tuple[Path, str]]:
    """(file, name shown in a predictions CSV): a single file as given, or a folder's images relative to it.

    Folders are searched recursively; hidden files and folders are skipped; order is by path.
    """
    if images.is_file():
        return [(images, printable(str(images)))]
    if not images.is_dir():
        raise DataError(f"{flag} {images} does not exist")
    found = [(path, display_path(path, images)) for path in find_images(images)]
    if not found:
        raise DataError(f"{flag} {images} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(found, key=lambda item: item[1])
