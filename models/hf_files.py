"""What the HuggingFace text towers (``hf:`` and ``cn-clip:``) share: the token limit, tokenizing
to the longest text, and a model's small files as byte tensors, so that a checkpoint rebuilds the
tower's tokenizer and architecture on a machine without its folder or cache (and still loads with
``weights_only``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MAX_TOKENS = 128  # more than any class description needs; a longer one is warned about at start-up


def context_length(tokenizer: Any, max_positions: int | None) -> int:
    """The most tokens a text keeps: MAX_TOKENS, the tokenizer's limit and the position embeddings."""
    limits = (MAX_TOKENS, getattr(tokenizer, "model_max_length", None), max_positions)
    return min(int(limit) for limit in limits if limit)


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, padded to the longest text (not to ``max_length``: the towers
    give the same features either way, and a short batch is cheaper)."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def files_as_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every file directly in ``folder``, by name, as a uint8 tensor of its bytes."""
    return {path.name: torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            for path in sorted(folder.iterdir()) if path.is_file()}


def write_files(files: dict[str, torch.Tensor], folder: Path) -> None:
    """The inverse of :func:`files_as_tensors` (only the base name of each key is used)."""
    for filename, data in files.items():
        (folder / Path(filename).name).write_bytes(data.numpy().tobytes())
