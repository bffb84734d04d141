"""Every checkpoint's SHA-256, recorded when it is written and checked whenever it is read.

A flipped byte in a checkpoint (a failing disk, a bad copy between servers) loads without a word
(torch checks no checksum), so each fold folder keeps ``checksums.json``, the record of its
checkpoints: ``{"checkpoint_best.pth": {"sha256": ..., "bytes": ...}, ...}``. :func:`save_recorded`
and :func:`link_recorded` are the only writers of a fold's checkpoints, :func:`load_recorded` the only
reader (predict.py, the test ensemble, ``--resume``, the gallery and the export all go through it):
a file that differs from its record is refused in one line naming it (docs/design.md §14).

The record is written in two steps around the checkpoint's rename: before it, the entry names the
new file and keeps the one it replaces (``replacing``); after it, the new file alone. A kill at any
moment leaves a checkpoint that matches its entry. A checkpoint without an entry (written before
records existed) loads unchecked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from utils.io import (CheckpointError, DamagedCheckpointError, file_sha256, link_or_copy, load_checkpoint, read_json,
                      save_checkpoint, Written, write_json)
from utils.run_dir import BEST_CHECKPOINT, CHECKSUMS_FILE, FOLD_DIR_PATTERN, LATEST_CHECKPOINT

Entry = dict[str, Any]  # {"sha256": hex, "bytes": size[, "replacing": {"sha256", "bytes"}]}


class ChangedCheckpointError(CheckpointError):
    """A checkpoint is not the file that was written (edited, cut short or damaged since); the message
    says how to get a whole one back."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(damaged_message(path, problem))


def record_file(checkpoint: Path) -> Path:
    return checkpoint.parent / CHECKSUMS_FILE


def read_record(checkpoint: Path) -> dict[str, Entry]:
    path = record_file(checkpoint)
    record = read_json(path, "checkpoint checksums") if path.is_file() else {}
    if not isinstance(record, dict):
        raise CheckpointError(f"{path} is not a train_clip checksum record (a JSON object)")
    return record


def _note(checkpoint: Path, entry: Entry | None) -> None:
    record = read_record(checkpoint)
    record.pop(checkpoint.name, None)
    write_json(record_file(checkpoint), {**record, **({checkpoint.name: entry} if entry else {})})


def _current(checkpoint: Path, entry: Entry | None) -> Entry | None:
    """The entry of the file now at ``checkpoint``: its record when settled, else hashed (a kill between
    the two steps of a write, or a file written before records existed)."""
    if not checkpoint.is_file():
        return None
    if entry and "replacing" not in entry:
        return {"sha256": entry["sha256"], "bytes": entry["bytes"]}
    return {"sha256": file_sha256(checkpoint), "bytes": checkpoint.stat().st_size}


def _replace_recorded(checkpoint: Path, write: Callable[[Callable[[Entry], None]], Entry | None]) -> None:
    """Run ``write``, which replaces ``checkpoint`` and returns the new file's entry, between the two
    record steps; ``write`` calls the function it gets with that entry just before its rename."""
    replaced = _current(checkpoint, read_record(checkpoint).get(checkpoint.name))

    def pending(entry: Entry) -> None:
        _note(checkpoint, {**entry, **({"replacing": replaced} if replaced else {})})

    _note(checkpoint, write(pending))


def save_recorded(checkpoint: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``checkpoint`` atomically and record its SHA-256 (hashed while written)."""
    def write(pending: Callable[[Entry], None]) -> Entry:
        written = save_checkpoint(checkpoint, state, lambda w: pending(entry_of(w)))
        return entry_of(written)

    _replace_recorded(checkpoint, write)


def entry_of(written: Written) -> Entry:
    return {"sha256": written.sha256, "bytes": written.size}


def link_recorded(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (:func:`utils.io.link_or_copy`), recorded as such."""
    entry = _current(source, read_record(source).get(source.name))

    def write(pending: Callable[[Entry], None]) -> Entry | None:
        if entry is not None:
            pending(entry)
        link_or_copy(source, target)
        return entry

    _replace_recorded(target, write)


def verify(checkpoint: Path) -> None:
    """Refuse ``checkpoint`` when it is not the file its fold's record names (unrecorded files pass)."""
    entry = read_record(checkpoint).get(checkpoint.name)
    if not isinstance(entry, dict):
        return
    accepted = [entry, *([entry["replacing"]] if isinstance(entry.get("replacing"), dict) else [])]
    size = checkpoint.stat().st_size
    if any(size == e.get("bytes") for e in accepted):
        digest = file_sha256(checkpoint)
        if any(size == e.get("bytes") and digest == e.get("sha256") for e in accepted):
            return
        problem = f"changed since it was written (its SHA-256 differs from the one in {CHECKSUMS_FILE})"
    elif size < min(e.get("bytes", 0) for e in accepted):
        problem = (f"is incomplete ({size} of the {entry.get('bytes')} bytes written: cut short by an interrupted "
                   "copy or a full disk)")
    else:
        problem = f"changed since it was written ({size} bytes; {entry.get('bytes')} were written)"
    raise ChangedCheckpointError(checkpoint, problem)


def describe(checkpoint: Path) -> str:
    """What the file is, for messages: ``the model fold 2 chose`` / ``fold 2's latest checkpoint``."""
    match = FOLD_DIR_PATTERN.fullmatch(checkpoint.parent.name)
    fold = match.group(1) if match else "?"
    return {BEST_CHECKPOINT: f"the model fold {fold} chose",
            LATEST_CHECKPOINT: f"fold {fold}'s latest checkpoint"}.get(checkpoint.name, "a checkpoint")


def damaged_message(checkpoint: Path, problem: str) -> str:
    """One line: the file, what it is, what is wrong, and how to get a whole one back."""
    match = FOLD_DIR_PATTERN.fullmatch(checkpoint.parent.name)
    retrain = (f"retrain fold {match.group(1)} (delete {checkpoint.parent} and run train_clip.py --resume "
               f"--output-dir {checkpoint.parent.parent})") if match else "train it again"
    return f"{checkpoint} ({describe(checkpoint)}) {problem}: copy it again from the original run folder, or {retrain}"


def load_recorded(checkpoint: Path, required_keys: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`utils.io.load_checkpoint` of a file checked against its record first."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        verify(checkpoint)
    try:
        return load_checkpoint(checkpoint, required_keys)
    except DamagedCheckpointError as exc:
        raise ChangedCheckpointError(checkpoint, exc.problem) from exc
