"""Whole runs of the programs (train_clip.py, predict.py, the driver): every test here is ``slow``.

``pytest -m "not slow"`` runs the unit tests alone (about a minute); ``make test`` runs everything.
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.slow)
