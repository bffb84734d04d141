"""Atomic file writes and safe checkpoint loading.

Every file a run writes goes through :func:`atomic_write`: the bytes land in a temporary
file in the target's directory, are flushed to disk, and replace the target in one
``os.replace``. A crash at any moment therefore leaves either the old file or the new one,
never a torn mix (docs/design.md §6).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from utils.disk import describe_write_error
from utils.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable or holds unexpected content."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that torch cannot read: cut short (an interrupted copy, a full disk) or damaged."""

    def __init__(self, path: Path, detail: str) -> None:
        self.problem = f"is incomplete or damaged (cut short by an interrupted copy or a full disk?): {detail}"
        super().__init__(f"checkpoint {path} {self.problem}")


class ReadError(UserError, ValueError):
    """A file the user named cannot be read as the format it must have; the message names it."""


class WriteError(UserError, RuntimeError):
    """A file could not be written (disk full, permissions); its previous version is unchanged."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; move it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WriteError(describe_write_error(exc, target)) from exc
    encoding = None if "b" in mode else "utf-8"
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline="" if encoding else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give results the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise WriteError(describe_write_error(exc, target)) from exc
        raise
    _fsync_directory(target.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(value) for value in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty UTF-8 JSON (non-ASCII kept readable) atomically.

    An undefined metric (NaN: ROC-AUC of a validation set that lacks a class) is written as
    ``null``: strict JSON readers (JavaScript, R's jsonlite, jq) refuse Python's ``NaN``.
    """
    text = json.dumps(_finite_or_null(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file atomically (UTF-8, so Chinese class names survive)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_write(path, "w") as handle:
        handle.write(buffer.getvalue())


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Fail early, in one line, when the file ``path`` named by ``flag`` could not be written later."""
    target = Path(path)
    if target.is_dir():
        raise WriteError(f"{flag} {target} is a folder; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise WriteError(f"{flag} {target} cannot be written: {exc.strerror or exc}") from None


class HashingWriter:
    """A binary stream that hashes and counts what goes through it to ``raw`` (None: nowhere), and
    keeps the operating system's error, which torch's zip writer replaces by its own text."""

    def __init__(self, raw: Any = None) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            if self.raw is not None:
                self.raw.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        if self.raw is not None:
            self.raw.flush()


def serialized_size(state: dict[str, Any]) -> int:
    """The bytes ``torch.save(state)`` writes, counted without writing them."""
    import torch

    sink = HashingWriter()
    torch.save(state, sink)
    return sink.size


# Write errors whose message says how many bytes the file needed.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Written:
    """A file as written: its SHA-256 (hex) and size in bytes."""

    sha256: str
    size: int


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any],
                    before_replace: Callable[[Written], None] | None = None) -> Written:
    """``torch.save`` ``state`` atomically; returns the file's SHA-256 (hashed while it is written) and size.

    ``before_replace`` gets them after the bytes are on disk but before the rename: the fold's
    checksum record notes it there (utils/checksums.py), and tests simulate a crash in that window.
    A full disk or quota is one line with the file's size (docs/design.md §14).
    """
    import torch  # here, not at the top: the study runner and leaderboard read run folders without torch

    path = Path(path)
    writer: HashingWriter | None = None
    try:
        with atomic_write(path, "wb") as handle:
            writer = HashingWriter(handle)
            torch.save(state, writer)
            written = Written(writer.sha256.hexdigest(), writer.size)
            if before_replace is not None:
                before_replace(written)
    except WriteError as exc:  # at fsync or rename: the operating system's error is the cause
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in FULL:
            raise WriteError(describe_write_error(cause, path, serialized_size(state))) from cause
        raise
    except RuntimeError as exc:  # torch's zip writer reports a failed write (ENOSPC) as RuntimeError
        cause = writer.error if writer is not None else None
        if cause is None:
            raise WriteError(f"cannot write {path}: {exc}; its previous version, if any, is unchanged") from exc
        needed = serialized_size(state) if cause.errno in FULL else None
        raise WriteError(describe_write_error(cause, path, needed)) from cause
    return written



def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in chunks: checkpoints weigh hundreds of MB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# What os.link raises where the file system has no hard links (FAT, some network and FUSE mounts).
NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``target`` the same file as ``source`` (a hard link), replacing ``target`` in one rename.

    Where the file system refuses hard links, ``target`` becomes an atomic copy. Every writer here
    replaces names instead of writing into files, so a later write of either name only breaks the link.
    """
    target = Path(target)
    temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"  # atomic_write's naming
    try:
        os.link(source, temporary)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise WriteError(describe_write_error(exc, target)) from exc
        with open(source, "rb") as original, atomic_write(target, "wb") as copy:
            shutil.copyfileobj(original, copy)
        return
    try:
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise WriteError(describe_write_error(exc, target)) from exc
    _fsync_directory(target.parent)


def load_checkpoint(path: str | os.PathLike, required_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it holds ``required_keys``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first_line.startswith("Weights only load failed"):  # whole, but not plain tensors
            raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from exc
        raise DamagedCheckpointError(path, unreadable_detail(first_line)) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [key for key in required_keys if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a train_clip checkpoint")
    return state


def unreadable_detail(torch_text: str) -> str:
    """Torch's reason, shorn of its miniz internals ("failed finding central directory. This is an
    internal miniz error...": the end of the zip file is missing)."""
    if "central directory" in torch_text:
        return "its end is missing"
    return torch_text[:120]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(ValueError):
    pass


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a UTF-8 JSON file; errors name the file, the flag it came from and the position.

    An object with the same key twice is refused: JSON parsers silently keep the last one, and a
    class description or setting written twice is a mistake to show, not to guess.
    """
    path = Path(path)
    if not path.is_file():
        raise ReadError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise ReadError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as exc:
        raise ReadError(f"{what} {path}: the key '{exc.args[0]}' appears twice in one object; keep "
                        "one (JSON readers silently drop the first)") from None
    except json.JSONDecodeError as exc:
        raise ReadError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                        f"column {exc.colno}") from exc
