"""Checkpoints of a fold: what they hold, the random-number state, slimming a finished fold, and
what happens to a damaged one.

``checkpoint_best.pth`` holds the model and metadata (for predict.py); ``checkpoint_latest.pth`` also
holds the training state (optimizer, scheduler, scaler, fold state, every RNG state) while its fold
trains, and only the last model once the fold is finished (docs/design.md §6). A finished fold whose
last epoch is its best keeps one copy: ``checkpoint_latest.pth`` becomes a hard link to
``checkpoint_best.pth``. The format of each file is :mod:`training.checkpoint_format`'s; every file
is written and read through :mod:`utils.checksums`, which records and checks its SHA-256.

A damaged checkpoint of an unfinished fold makes ``--resume`` train that fold again from its start
(its result does not depend on where it resumed); one of a finished fold is refused, naming it.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.checkpoint_format import (CHECKPOINT_DTYPES, CHECKPOINT_FORMAT, SharedFiles, SharedWeights, cast_weights,
                                        full_model_state, pack_zero_rows, unpack_zero_rows)
from utils.checksums import ChangedCheckpointError, link_recorded, load_recorded, save_recorded, verify
from utils.disk import space_shortfall
from utils.io import WriteError, serialized_size
from utils.run_dir import RunDir

log = logging.getLogger("train_clip")

# What checkpoint_latest.pth adds to the model while its fold trains, for --resume. A finished fold
# drops it: AdamW's two moments alone weigh twice the trainable parameters, on every fold of every run.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "fold_state", "rng")
LATEST_KEYS = ("format", "model", "epoch", *TRAINING_STATE_KEYS)
# Only when the saved model is not the one that trains (--ema-decay, --wise-alpha: training.finetune).
OPTIONAL_TRAINING_KEYS = ("trained_weights",)


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
    shared: SharedWeights | None = None  # frozen towers and untrained tables, written once per run
    dtype: str = "float32"  # --checkpoint-dtype of the final models

    def _state(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float],
               final: bool) -> dict[str, Any]:
        """A checkpoint without the frozen towers; ``final`` (a model to keep, not one to resume
        training from) casts its weights to ``dtype``."""
        weights = model.state_dict()
        shared = {}
        if self.shared is not None:
            weights = self.shared.split(weights)
            shared = {"shared_weights": self.shared.reference()}
        if final:
            weights = cast_weights(weights, self.dtype)
        return {"format": CHECKPOINT_FORMAT, "model": weights, "fold": self.fold, "epoch": epoch,
                "metrics": metrics, **shared, **self.metadata}

    def save_best(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        save_recorded(self.run_dir.best_checkpoint(self.fold), self._state(model, epoch, metrics, final=True))

    def save_latest(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float],
                    training: dict[str, Any], fold_state: dict[str, Any],
                    sampler_generator: torch.Generator) -> None:
        """The model with everything ``--resume`` needs to continue after ``epoch`` exactly."""
        if "optimizer" in training:
            training = {**training, "optimizer": pack_zero_rows(training["optimizer"])}
        save_recorded(self.run_dir.latest_checkpoint(self.fold), {
            **self._state(model, epoch, metrics, final=False), **training, "fold_state": fold_state,
            "rng": capture_rng(sampler_generator)})

    def set_temperature(self, temperature: float) -> None:
        """Store the fold's fitted temperature (--calibrate) in ``checkpoint_best.pth``, which predict.py
        and the test ensemble divide the model's logits by."""
        path = self.run_dir.best_checkpoint(self.fold)
        save_recorded(path, {**load_recorded(path), "temperature": temperature})

    def has_latest(self) -> bool:
        return self.run_dir.latest_checkpoint(self.fold).is_file()

    def load_latest(self) -> dict[str, Any]:
        """``checkpoint_latest.pth`` with its whole model state (frozen towers put back)."""
        path = self.run_dir.latest_checkpoint(self.fold)
        saved = load_recorded(path, LATEST_KEYS)
        return {**saved, "model": full_model_state(saved, path), "optimizer": unpack_zero_rows(saved["optimizer"])}

    def resume_state(self) -> dict[str, Any] | None:
        """What the fold continues from (:meth:`load_latest`), or None to train it from its start: none
        was saved, or (one warning names it) a checkpoint of this unfinished fold is damaged."""
        if not self.has_latest():
            return None
        try:
            best = self.run_dir.best_checkpoint(self.fold)
            if best.is_file():
                verify(best)
            return self.load_latest()
        except ChangedCheckpointError as exc:
            log.warning("Fold %d: %s %s; training fold %d again from its start (a fold's result does not depend "
                        "on where it resumed; finished folds are kept)", self.fold, exc.path, exc.problem, self.fold)
            return None

    def check_finished(self) -> None:
        """Refuse, in one line naming it, a damaged checkpoint of this finished fold."""
        for path in (self.run_dir.best_checkpoint(self.fold), self.run_dir.latest_checkpoint(self.fold)):
            if path.is_file():
                verify(path)

    def disk_bytes(self, model: torch.nn.Module, save_best: bool) -> tuple[int, int]:
        """Bytes of this fold's checkpoints at most while it trains (the best, the latest with AdamW's
        two moments, and a new latest beside the old one while it is written) and once it is finished."""
        weights = self.shared.split(model.state_dict()) if self.shared is not None else model.state_dict()
        extra = sum(v.nbytes for v in self.metadata.values() if isinstance(v, torch.Tensor)) + sum(
            t.nbytes for files in self.metadata.values() if isinstance(files, dict)
            for t in files.values() if isinstance(t, torch.Tensor))
        tables = self.shared.tables if self.shared is not None else {}
        # A lookup table's moments are saved as the few rows its descriptions use (pack_zero_rows).
        moments = 2 * sum(p.nbytes for name, p in model.named_parameters() if p.requires_grad and name not in tables)
        target = CHECKPOINT_DTYPES[self.dtype].itemsize
        final = extra + sum(v.numel() * target if v.is_floating_point() else v.nbytes for v in weights.values())
        rng = serialized_size({"rng": capture_rng(torch.Generator())})  # every RNG's state: ~20 KB
        latest = extra + sum(v.nbytes for v in weights.values()) + moments + rng
        best = final if save_best else 0
        return best + 2 * latest, best + final

    def check_disk_space(self, model: torch.nn.Module, folds_left: int, save_best: bool) -> None:
        """Refuse to start the fold when its file system cannot hold its checkpoints, and warn when it
        cannot hold those of every fold left (estimated from the model: docs/design.md §14)."""
        peak, kept = self.disk_bytes(model, save_best)
        present = sum(p.stat().st_size for p in (self.run_dir.best_checkpoint(self.fold),
                                                  self.run_dir.latest_checkpoint(self.fold)) if p.is_file())
        folder = self.run_dir.path
        refusal = space_shortfall(folder, peak - present, f"fold {self.fold}'s checkpoints")
        if refusal is not None:
            raise WriteError(f"fold {self.fold} cannot start: {refusal}; then continue with --resume")
        warning = space_shortfall(folder, peak - present + (folds_left - 1) * kept, f"the {folds_left} folds left")
        if folds_left > 1 and warning is not None:
            log.warning("%s; the run would stop when the disk is full (continue it then with --resume)", warning)

    def drop_training_state(self) -> None:
        """Reduce a finished fold's ``checkpoint_latest.pth`` to the last epoch's model and metadata.

        When the last epoch is also the best, that is ``checkpoint_best.pth`` exactly (same model,
        epoch, metrics, type): the latest becomes a hard link to it, one copy on disk.
        """
        latest = self.run_dir.latest_checkpoint(self.fold)
        if not latest.is_file():
            return
        saved = load_recorded(latest)
        if not any(key in saved for key in TRAINING_STATE_KEYS):
            return
        best = self.run_dir.best_checkpoint(self.fold)
        fold_state = saved.get("fold_state")
        if best.is_file() and isinstance(fold_state, dict) and fold_state.get("best_epoch") == saved.get("epoch"):
            link_recorded(best, latest)
            return
        kept = {key: value for key, value in saved.items()
                if key not in TRAINING_STATE_KEYS + OPTIONAL_TRAINING_KEYS}
        save_recorded(latest, {**kept, "model": cast_weights(kept["model"], self.dtype)})


def load_best_model_state(run_dir: RunDir, fold: int, files: SharedFiles | None = None) -> dict[str, torch.Tensor]:
    path = run_dir.best_checkpoint(fold)
    return full_model_state(load_recorded(path, ("model",)), path, files)
