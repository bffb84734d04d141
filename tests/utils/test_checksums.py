"""utils/checksums.py: every fold checkpoint's SHA-256 recorded when written, checked when read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from utils.checksums import ChangedCheckpointError, link_recorded, load_recorded, save_recorded, verify
from utils.io import save_checkpoint
from utils.run_dir import CHECKSUMS_FILE


@pytest.fixture
def fold_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "fold_2"
    folder.mkdir(parents=True)
    return folder


def state(seed: int) -> dict:
    return {"model": {"w": torch.randn(64, generator=torch.Generator().manual_seed(seed))}, "epoch": seed}


def flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_recorded_checkpoint_loads_and_one_flipped_byte_is_refused_naming_the_file(fold_dir):
    path = fold_dir / "checkpoint_best.pth"
    save_recorded(path, state(1))
    assert torch.equal(load_recorded(path)["model"]["w"], state(1)["model"]["w"])
    # A byte inside the tensor's data: torch itself loads the altered weights without a word.
    offset = path.read_bytes().index(state(1)["model"]["w"].numpy().tobytes()[:8])
    flip_one_byte(path, offset)
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], state(1)["model"]["w"])
    with pytest.raises(ChangedCheckpointError) as caught:
        load_recorded(path)
    message = str(caught.value)
    assert str(path) in message and "the model fold 2 chose" in message and "changed since it was written" in message
    assert "copy it again" in message and "retrain fold 2" in message and "\n" not in message


def test_a_truncated_checkpoint_is_called_incomplete(fold_dir):
    path = fold_dir / "checkpoint_latest.pth"
    save_recorded(path, state(1))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ChangedCheckpointError, match="fold 2's latest checkpoint.* is incomplete"):
        load_recorded(path)


def test_an_unrecorded_truncated_checkpoint_says_incomplete_not_miniz(fold_dir):
    path = fold_dir / "checkpoint_latest.pth"
    save_checkpoint(path, state(1))  # no record: a file of a run written before records existed
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ChangedCheckpointError) as caught:
        load_recorded(path)
    assert "incomplete or damaged" in str(caught.value) and "miniz" not in str(caught.value)


def test_unrecorded_checkpoints_load_unchecked(fold_dir):
    path = fold_dir / "checkpoint_best.pth"
    save_checkpoint(path, state(3))
    assert load_recorded(path)["epoch"] == 3


def test_a_kill_between_the_record_and_the_rename_leaves_a_file_that_matches(fold_dir, monkeypatch):
    """The record names the new file before the rename; the old one stays accepted until it is done."""
    path = fold_dir / "checkpoint_latest.pth"
    save_recorded(path, state(1))

    class Killed(BaseException):
        pass

    import utils.checksums

    real_save = utils.checksums.save_checkpoint

    def killed_before_rename(target, saved, before_replace):
        def then_die(written):
            before_replace(written)
            raise Killed

        return real_save(target, saved, then_die)

    monkeypatch.setattr(utils.checksums, "save_checkpoint", killed_before_rename)
    with pytest.raises(Killed):
        save_recorded(path, state(2))
    record = json.loads((fold_dir / CHECKSUMS_FILE).read_text())[path.name]
    assert "replacing" in record  # the pending step was written
    assert load_recorded(path)["epoch"] == 1  # the old file, still accepted
    monkeypatch.undo()
    save_recorded(path, state(3))  # the next write settles the record
    record = json.loads((fold_dir / CHECKSUMS_FILE).read_text())[path.name]
    assert "replacing" not in record and load_recorded(path)["epoch"] == 3
    # The old version is no longer accepted once the new one is settled.
    save_checkpoint(path, state(1))
    with pytest.raises(ChangedCheckpointError):
        verify(path)


def test_a_linked_latest_is_recorded_as_the_best(fold_dir):
    best, latest = fold_dir / "checkpoint_best.pth", fold_dir / "checkpoint_latest.pth"
    save_recorded(best, state(1))
    save_recorded(latest, state(2))
    link_recorded(best, latest)
    record = json.loads((fold_dir / CHECKSUMS_FILE).read_text())
    assert record[latest.name] == record[best.name] and load_recorded(latest)["epoch"] == 1
