"""Shared fixtures: tiny generated datasets and a tiny randomly initialised text encoder.

Everything here is built on the fly, offline, in seconds: no weights are downloaded.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# `make test` runs one xdist worker per core: a second torch thread per worker only waits for a core.
# Set before torch is imported, and inherited by the trainings that tests start as subprocesses.
# Measured on 2 cores with the other worker busy: 20 steps of a tiny model take 1 s on one thread,
# 34 s on two (their OpenMP threads spin waiting on each other).
os.environ["OMP_NUM_THREADS"] = "1"

from tests.helpers import make_image_tree, make_tiny_text_encoder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide BERT with MiniLM's tokenizer, saved as a local HuggingFace folder."""
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """Three classes (one with a Chinese name) of 8 small images each."""
    return make_image_tree(tmp_path / "data", {"cat_a": 8, "cat_b": 8, "股骨柄A": 8})
