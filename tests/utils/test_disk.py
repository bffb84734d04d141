"""utils/disk.py and utils/io.py: a failed write says what happened, in one line, and loses nothing."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from tests.disk_faults import fill_disk_after
from utils.disk import describe_write_error, human_bytes, mount_point, space_shortfall
from utils.io import WriteError, load_checkpoint, save_checkpoint, serialized_size, write_json


def test_a_full_disk_at_the_write_names_the_file_system_the_free_and_the_needed_bytes(tmp_path, monkeypatch):
    path = tmp_path / "fold_1" / "checkpoint_latest.pth"
    save_checkpoint(path, {"w": torch.zeros(10)})
    big = {"w": torch.randn(20_000)}
    fill_disk_after(monkeypatch, room=30_000)  # the file needs ~80 KB
    with pytest.raises(WriteError) as caught:
        save_checkpoint(path, big)
    message = str(caught.value)
    assert "\n" not in message and "inline_container" not in message and "unexpected pos" not in message
    assert f"the file system mounted on {mount_point(tmp_path)} is full" in message
    assert f"the file needs {human_bytes(serialized_size(big))}" in message and " free" in message
    assert "--checkpoint-dtype bfloat16" in message and "--resume" in message
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(10))  # the previous version is whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_full_disk_at_a_json_write_is_one_line_too(tmp_path, monkeypatch):
    fill_disk_after(monkeypatch, room=3)
    with pytest.raises(WriteError, match=r"history.json: the file system mounted on .* is full"):
        write_json(tmp_path / "history.json", {"epoch": list(range(100))})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("code, words", [(errno.EDQUOT, "disk quota"), (errno.EROFS, "is read-only"),
                                         (errno.EACCES, os.strerror(errno.EACCES))])
def test_quota_and_read_only_say_so(tmp_path, code, words):
    message = describe_write_error(OSError(code, os.strerror(code)), tmp_path / "x.pth")
    assert words in message and str(tmp_path / "x.pth") in message


def test_the_space_check_compares_with_the_free_bytes(tmp_path):
    assert space_shortfall(tmp_path, 1, "one byte") is None
    refusal = space_shortfall(tmp_path / "not" / "yet", 10 ** 18, "fold 3's checkpoints")
    assert refusal is not None and "fold 3's checkpoints need about 1000000.0 TB" in refusal


def test_human_bytes():
    assert [human_bytes(n) for n in (999, 1000, 1_536_000, 3 * 10 ** 9)] == ["999 bytes", "1.0 KB", "1.5 MB", "3.0 GB"]


def test_space_check_path_need_not_exist(tmp_path: Path):
    assert mount_point(tmp_path / "a" / "b") == mount_point(tmp_path)
