"""A run folder's lock that holds on a shared file system (NFS, Lustre, GPFS) as well as on a local disk.

The lock file holds its holder's record: host, pid, start time, the process's start time in the
kernel's ticks (to tell a reused pid) and the lease in seconds. An empty or missing file is free.

- **Claim.** The record is written to a private temporary file first, then hard-linked to the lock
  file's name. ``link()`` fails when the name exists, atomically on every POSIX file system, NFSv3
  and later included, so of two contenders on any hosts exactly one gets the folder, and nobody
  ever reads a half-written record.
- **Alive.** The holder also keeps an OS lock (``flock``) on the file, and renews a lease by touching
  the file's modification time from a thread every tenth of the lease (an epoch may take longer
  than the lease; the thread does not wait for one).
- **Stale.** A record nobody holds the OS lock on is stale when its holder ran on this host and its
  pid is gone (or belongs to a newer process), or ran on another host and its lease has expired.
  ``flock`` alone is not trusted across hosts: some mounts keep it local to each machine. A record
  that cannot be read (a file some other program wrote) has no lease: the OS lock alone judges it.
- **Taking over.** A stale lock is removed under a break lock (a second file made with ``O_EXCL``)
  after checking it is still the same file, so two contenders never remove each other's fresh claim;
  then the contender claims like anyone else.

The lease (default 10 minutes) is the environment variable ``TRAIN_CLIP_LOCK_LEASE_SECONDS``: after a
node dies, its runs' folders can be taken over from other hosts once it has passed.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from utils.errors import ConfigError

log = logging.getLogger("train_clip.run_lock")

LEASE_VARIABLE = "TRAIN_CLIP_LOCK_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 600.0
RENEWALS_PER_LEASE = 10
CLAIM_ATTEMPTS = 5
BREAK_LOCK_STALE_SECONDS = 30.0  # a break lock is held for milliseconds: one this old was left by a crash
BREAK_LOCK_WAIT_SECONDS = 5.0
OWN_FLOCK_ATTEMPTS = 20  # a contender's look at the file holds a shared flock for microseconds


class LockHeld(Exception):
    """A live process holds the lock; ``holder`` is its record."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(describe(holder))
        self.holder = holder


class LockContended(Exception):
    """The lock kept changing hands while this process tried to take it."""


@dataclass(frozen=True)
class Found:
    """What a lock file holds now: the record (empty: free), and the file's identity and age."""

    record: dict[str, Any]
    stat: os.stat_result
    flock_held: bool  # another open file holds the OS lock


def lease_seconds(environ: Mapping[str, str] = os.environ) -> float:
    value = environ.get(LEASE_VARIABLE, "")
    if not value:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{LEASE_VARIABLE} must be a positive number of seconds, got '{value}'")
    return seconds


def describe(holder: dict[str, Any]) -> str:
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})")


def is_this_process(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux); None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux); None where /proc cannot tell."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie does not: it has ended and closed its files, only its parent
    has not reaped it yet (a killed torchrun's workers wait so until init collects them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    fields = _proc_stat(pid)
    return not (fields and fields[0] == "Z")


def own_record(lease: float) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": process_start_ticks(os.getpid()), "lease_s": lease}


# ---------------------------------------------------------------------------------------------
# Looking at a lock file
# ---------------------------------------------------------------------------------------------
def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {"host": "?", "pid": "?", "started": "?"}  # unreadable: judged by the OS lock alone
    return data if isinstance(data, dict) else {}


def _flock_held(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        # No lock service on this mount (ENOLCK, EOPNOTSUPP): only the record can tell.
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def look(lock_file: Path) -> Found | None:
    """The lock file as it is now, or None when there is none."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
        return Found(_parse(handle.read()), os.fstat(fd), _flock_held(fd))


def stale_reason(found: Found, now: float | None = None) -> str | None:
    """Why the record's holder is gone, or None while it may be alive (an empty record: 'released')."""
    record = found.record
    if not record:
        return "released"
    if found.flock_held:
        return None
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        pid = record["pid"]
        if not pid_alive(pid):
            return f"process {pid} has ended"
        recorded, current = record.get("process_start"), process_start_ticks(pid)
        if recorded is not None and current is not None and recorded != current:
            return f"process {pid} has ended (its pid now belongs to another process)"
        return None
    lease = record.get("lease_s")
    if not isinstance(lease, (int, float)):  # an unreadable record (see _parse)
        return "nobody holds its OS lock"
    age = (time.time() if now is None else now) - found.stat.st_mtime
    return f"its lease of {lease:g} s expired {age - lease:.0f} s ago" if age > lease else None


def live_holder(lock_file: Path) -> dict[str, Any] | None:
    """The record of the live holder, or None when the lock is free or stale."""
    found = look(lock_file)
    if found is None or stale_reason(found) is not None:
        return None
    return found.record


# ---------------------------------------------------------------------------------------------
# Taking and holding it
# ---------------------------------------------------------------------------------------------
def _private_name(lock_file: Path, word: str) -> Path:
    # ".NAME.WORD.tmp": the run folder counts it as a temporary file of the lock (utils.run_dir).
    return lock_file.with_name(f".{lock_file.name}.{word}.tmp")


def _write_private(path: Path, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(fd)


@contextlib.contextmanager
def _break_lock(lock_file: Path) -> Iterator[None]:
    """One contender at a time may remove a stale lock file."""
    path = _private_name(lock_file, "break")
    deadline = time.monotonic() + BREAK_LOCK_WAIT_SECONDS
    while True:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > BREAK_LOCK_STALE_SECONDS:
                    path.unlink()
                    continue
            if time.monotonic() > deadline:
                raise LockContended() from None
            time.sleep(0.02)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_if_stale(lock_file: Path, judged: Found) -> None:
    """Remove the lock file if it is still the stale one judged (another contender may have replaced it)."""
    with _break_lock(lock_file):
        now = look(lock_file)
        if now is not None and os.path.samestat(now.stat, judged.stat) and stale_reason(now) is not None:
            lock_file.unlink()


def _claim(lock_file: Path, private: Path) -> None:
    """Link ``private`` to ``lock_file``; a stale lock is taken over (with a warning), a live one raises."""
    for _ in range(CLAIM_ATTEMPTS):
        try:
            os.link(private, lock_file)
            return
        except FileExistsError:
            pass
        found = look(lock_file)
        if found is None:
            continue  # released meanwhile
        reason = stale_reason(found)
        if reason is None:
            raise LockHeld(found.record)
        if found.record:
            log.warning("Taking over %s: its holder, %s, stopped without releasing it (%s)", lock_file.parent,
                        describe(found.record), reason)
        _remove_if_stale(lock_file, found)
    raise LockContended()


def _take_own_flock(fd: int) -> None:
    for _ in range(OWN_FLOCK_ATTEMPTS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                log.debug("No OS lock on this file system (%s): the claim and the lease hold the folder", exc)
                return
        time.sleep(0.01)


class Holding:
    """A lock this process holds: renews its lease until released."""

    def __init__(self, lock_file: Path, fd: int, lease: float) -> None:
        self.lock_file = lock_file
        self.fd = fd
        self.lease = lease
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="run-lock-lease", daemon=True)
        self._renewer.start()

    def still_ours(self) -> bool:
        try:
            return os.path.samestat(os.fstat(self.fd), os.stat(self.lock_file))
        except FileNotFoundError:
            return False

    def _renew(self) -> None:
        warned = False
        while not self._stop.wait(self.lease / RENEWALS_PER_LEASE):
            with contextlib.suppress(OSError):  # a hiccup of the file server: the next renewal may work
                os.utime(self.fd)
            if not warned and not self.still_ours():
                warned = True
                log.error("The lock of %s was taken over by another process (this one's lease was not renewed "
                          "in time?); its files may now be mixed with another run's", self.lock_file.parent)

    def remove(self) -> None:
        """Delete the lock file (the caller still holds it: nobody else can be using the folder)."""
        if self.still_ours():
            self.lock_file.unlink()

    def release(self) -> None:
        self._stop.set()
        self._renewer.join()
        try:
            if self.still_ours():
                os.ftruncate(self.fd, 0)  # an empty lock file: released cleanly
                os.fsync(self.fd)
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


class Terminated(KeyboardInterrupt):
    """SIGTERM while a lock is held (a batch system's preemption, ``kill PID``). Python's default would
    end the process at once, leaving half-written temporary files and the lock; raised instead, it
    unwinds like Ctrl-C: every atomic write removes its temporary file and the lock is released."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (signal handlers exist in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Terminated(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def hold(lock_file: Path, environ: Mapping[str, str] = os.environ) -> Iterator[Holding]:
    """Hold ``lock_file`` (its folder must exist). Raises :class:`LockHeld` naming a live holder,
    :class:`LockContended` when the lock kept changing hands, OSError when it cannot be written."""
    lease = lease_seconds(environ)
    private = _private_name(lock_file, uuid.uuid4().hex)
    _write_private(private, own_record(lease))
    try:
        _claim(lock_file, private)
    finally:
        private.unlink()
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        lock_file.unlink()  # linked by us a moment ago
        raise
    _take_own_flock(fd)
    holding = Holding(lock_file, fd, lease)
    try:
        with sigterm_unwinds():
            yield holding
    finally:
        holding.release()
