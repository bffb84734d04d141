"""Logging: one readable line per event on the console and in the run's log file."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils.io import WriteError

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(log_file: str | Path | None, level: int = logging.INFO, prefix: str = "") -> logging.Logger:
    """Configure the ``train_clip`` logger hierarchy to write to stderr and ``log_file``.

    ``prefix`` starts every line's text (``[rank 1] `` for a torchrun process other than rank 0).

    Handlers are replaced rather than added, so calling this twice (tests, notebooks)
    does not duplicate lines.
    """
    logger = logging.getLogger("train_clip")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT.replace("%(levelname)s", prefix + "%(levelname)s"), DATE_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None:
        path = Path(log_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a file name that is not valid UTF-8 is logged as \xNN, not a logging error.
            file_handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
        except IsADirectoryError:
            raise WriteError(f"--log-file {path} is a folder; give a file name such as {path / 'train.log'}") from None
        except OSError as exc:
            raise WriteError(f"--log-file {path} cannot be written: {exc.strerror or exc}") from None
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the ``train_clip`` logger, e.g. ``get_logger(__name__)``."""
    return logging.getLogger("train_clip").getChild(name)
