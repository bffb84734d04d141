"""The run's log: every line once, on the console and in the file, and a clear error for a bad path."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from utils.io import WriteError
from utils.logging_setup import get_logger, setup_logging


def test_setting_up_twice_writes_each_line_once_with_the_prefix(tmp_path: Path, capsys):
    setup_logging(tmp_path / "a.log")
    logger = setup_logging(tmp_path / "logs" / "b.log", prefix="[rank 1] ")
    get_logger("models.x").info("fold %d of 股骨柄A", 1)
    logger.debug("below the level")
    for handler in logger.handlers:
        handler.flush()
    lines = (tmp_path / "logs" / "b.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and lines[0].endswith("[rank 1] INFO fold 1 of 股骨柄A")
    assert capsys.readouterr().err.count("fold 1 of 股骨柄A") == 1
    assert (tmp_path / "a.log").read_text(encoding="utf-8") == ""
    setup_logging(None, logging.WARNING)  # closes the file handlers again


def test_a_log_file_that_is_a_folder_is_one_clear_error(tmp_path: Path):
    with pytest.raises(WriteError, match=r"--log-file .* is a folder; give a file name such as"):
        setup_logging(tmp_path)
