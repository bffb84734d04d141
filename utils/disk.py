"""What a failed write means, said in the user's terms: which file system, how much space it has
left, how much the file needed, and what to do (docs/design.md §14).

Torch's zip writer turns a full disk into "enforce fail at inline_container.cc ... unexpected pos";
:func:`describe_write_error` turns the operating system's error under it into one line instead.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# What shrinks a run's checkpoints the most without changing its results (README "Checkpoints").
SMALLER_CHECKPOINTS = "--checkpoint-dtype bfloat16 (halves each saved model)"


def human_bytes(count: int) -> str:
    """``1536`` → ``1.5 KB``; 1 KB = 1000 bytes, as ``df -H`` counts."""
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent (the output folder may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path``."""
    path = existing_folder(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system."""
    return shutil.disk_usage(existing_folder(path)).free


def file_system(path: Path) -> str:
    return f"the file system mounted on {mount_point(path)}"


def describe_write_error(exc: OSError, target: Path, needed: int | None = None) -> str:
    """One line for a failed write of ``target``: what happened and what to do. ``needed``: the bytes
    the whole file takes, when known."""
    where = file_system(target)
    wanted = f", the file needs {human_bytes(needed)}" if needed else ""
    if exc.errno == errno.ENOSPC:
        return (f"cannot write {target}: {where} is full (no space left on device: {human_bytes(free_bytes(target))} "
                f"free{wanted}); "
                f"free space there, or make checkpoints smaller with {SMALLER_CHECKPOINTS}, then continue "
                "with --resume; its previous version, if any, is unchanged")
    if exc.errno == errno.EDQUOT:
        return (f"cannot write {target}: your disk quota on {where} is used up{wanted}; free space in your quota (or "
                f"use {SMALLER_CHECKPOINTS}), then continue with --resume; its previous version, if any, "
                "is unchanged")
    if exc.errno == errno.EROFS:
        return (f"cannot write {target}: {where} is read-only; write the run to another folder "
                "(--output-dir) or have it mounted writable")
    return f"cannot write {target}: {exc.strerror or exc}; its previous version, if any, is unchanged"


def space_shortfall(folder: Path, needed: int, what: str) -> str | None:
    """A one-line refusal when ``folder``'s file system has less than ``needed`` bytes free for
    ``what``; None when it fits."""
    free = free_bytes(folder)
    if free >= needed:
        return None
    return (f"{file_system(folder)} has {human_bytes(free)} free, but {what} need about "
            f"{human_bytes(needed)}: free space there, or make checkpoints smaller with {SMALLER_CHECKPOINTS}")
