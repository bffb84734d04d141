"""A full disk on every machine: the operating system's ENOSPC raised at the write itself."""
from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

import pytest


class FillingFile:
    """A file that takes ``room[0]`` more bytes, then fails as a full disk does (and stays full)."""

    def __init__(self, raw: Any, room: list[int]) -> None:
        self._raw, self._room = raw, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room[0]:
            self._room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> "FillingFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._raw.close()


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> list[int]:
    """From now on, the temporary files of atomic writes (utils.io.atomic_write: ``tempfile.mkstemp``,
    then ``os.fdopen``) get ``room`` bytes in all; returns the mutable room left (raise it to free space)."""
    left, temporaries = [room], set()
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        temporaries.add(fd)
        return fd, name

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(fd, *args, **kwargs)
        if fd not in temporaries:
            return handle
        temporaries.discard(fd)
        return FillingFile(handle, left)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return left
