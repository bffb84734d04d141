"""Checkpoints of a fold: what they hold, the random-number state, and slimming a finished fold.

``checkpoint_best.pth`` holds the model and metadata (for predict.py); ``checkpoint_latest.pth`` also
holds the training state (optimizer, scheduler, scaler, fold state, every RNG state) while its fold
trains, and only the last model once the fold is finished (DESIGN.md §6).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from utils.io import load_checkpoint, save_checkpoint
from utils.run_dir import RunDir

CHECKPOINT_FORMAT = "train_clip/1"


# What checkpoint_latest.pth adds to the model while its fold trains, for --resume. A finished fold
# drops it: AdamW's two moments alone weigh twice the trainable parameters, on every fold of every run.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "fold_state", "rng")
LATEST_KEYS = ("format", "model", "epoch", *TRAINING_STATE_KEYS)


def capture_rng(sampler_generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampler": sampler_generator.get_state()}


def restore_rng(state: dict[str, Any], sampler_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler_generator.set_state(state["sampler"])


@dataclass
class FoldCheckpoints:
    """Writes and reads one fold's checkpoints; ``metadata`` is what every checkpoint carries
    (config, class names and texts, the text tower's files): plain values and tensors only, so
    every checkpoint loads with ``weights_only=True``."""

    run_dir: RunDir
    fold: int
    metadata: dict[str, Any]

    def _state(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "fold": self.fold, "epoch": epoch,
                "metrics": metrics, **self.metadata}

    def save_best(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        save_checkpoint(self.run_dir.best_checkpoint(self.fold), self._state(model, epoch, metrics))

    def save_latest(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float],
                    training: dict[str, Any], fold_state: dict[str, Any],
                    sampler_generator: torch.Generator) -> None:
        """The model with everything ``--resume`` needs to continue after ``epoch`` exactly."""
        save_checkpoint(self.run_dir.latest_checkpoint(self.fold), {
            **self._state(model, epoch, metrics), **training, "fold_state": fold_state,
            "rng": capture_rng(sampler_generator)})

    def has_latest(self) -> bool:
        return self.run_dir.latest_checkpoint(self.fold).is_file()

    def load_latest(self) -> dict[str, Any]:
        return load_checkpoint(self.run_dir.latest_checkpoint(self.fold), LATEST_KEYS)

    def drop_training_state(self) -> None:
        """Reduce a finished fold's ``checkpoint_latest.pth`` to the last epoch's model and metadata."""
        latest = self.run_dir.latest_checkpoint(self.fold)
        if not latest.is_file():
            return
        saved = load_checkpoint(latest)
        if any(key in saved for key in TRAINING_STATE_KEYS):
            save_checkpoint(latest, {key: value for key, value in saved.items() if key not in TRAINING_STATE_KEYS})


def load_best_model_state(run_dir: RunDir, fold: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir.best_checkpoint(fold), ("model",))["model"]
