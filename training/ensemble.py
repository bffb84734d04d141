"""Scoring images with fold models, alone or as an ensemble: one implementation for the trainer's
validation and held-out test set and for predict.py, so the numbers agree exactly. A fold model
is rebuilt from its checkpoint alone (:func:`load_fold_model`) by predict.py and the gallery, and a
finished run's fold models (:func:`checkpoint_paths`, :func:`load_models`) by predict.py and
``python -m export``.

An image's probabilities are ``softmax(scale · image_emb @ class_emb.T)``; the class embeddings
and the scale are computed once per model, outside autocast. An ensemble averages the fold
models' probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.clip_model import CLIPClassifier, build_clip_model, model_kwargs_from_config
from models.names import UnknownEncoderError, WeightsNotFoundError
from reporting.calibration import apply_temperature
from training.checkpoint_format import SharedFiles, full_model_state
from training.lora import adapt_towers, check_base, merge_adapters
from utils.device import autocast, to_device
from utils.checksums import load_recorded
from utils.errors import UserError
from utils.io import CheckpointError
from utils.logging_setup import get_logger
from utils.run_dir import RunDir

log = get_logger(__name__)

CHECKPOINT_KEYS = ("model", "config", "class_names", "class_texts")


@dataclass
class FoldModel:
    """One fold's classifier with its class embeddings and logit scale computed once."""

    fold: int
    model: CLIPClassifier
    class_emb: torch.Tensor
    scale: torch.Tensor
    temperature: float = 1.0  # --calibrate temperature: fitted after training, stored in the checkpoint

    @classmethod
    @torch.no_grad()
    def prepare(cls, model: CLIPClassifier, fold: int = 0, temperature: float = 1.0) -> FoldModel:
        model.eval()
        return cls(fold, model, model.encode_classes(), model.scale(), temperature)


@torch.no_grad()
def image_logits(fold_model: FoldModel, images: torch.Tensor, device: torch.device,
                 amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Logits of a batch against every class (images are moved to ``device`` here)."""
    with autocast(device, amp_dtype):
        image_emb = fold_model.model.encode_images(to_device(images, device))
    return CLIPClassifier.logits(image_emb, fold_model.class_emb, fold_model.scale)


@torch.no_grad()
def ensemble_probs(models: Sequence[FoldModel], images: torch.Tensor, device: torch.device,
                   amp_dtype: torch.dtype | None) -> np.ndarray:
    """Mean over ``models`` of each one's class probabilities (calibrated with its temperature) for a batch."""
    # apply_temperature is the trainer's own calibration, so a test set scores the same here and there.
    return np.mean([apply_temperature(image_logits(m, images, device, amp_dtype).softmax(dim=1).cpu().numpy(),
                                      m.temperature) for m in models], axis=0)


def load_fold_model(fold: int, path: Path, device: torch.device, class_texts: list[list[str]] | None = None,
                    files: SharedFiles | None = None) -> tuple[FoldModel, dict]:
    """Rebuild fold ``fold``'s classifier from its checkpoint; returns it and the checkpoint's metadata.
    ``files``: the run files already read (one for all folds of a run)."""
    state = load_recorded(path, CHECKPOINT_KEYS)  # refused when not the file that was written
    config = state["config"]
    try:
        kwargs = model_kwargs_from_config(config)
        img_size = int(config["img_size"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its config lacks {exc}") from exc
    try:
        # Checkpoints carry a HuggingFace text tower's tokenizer and config: no folder or cache needed.
        model = build_clip_model(**kwargs, class_texts=state["class_texts"], load_pretrained=False,
                                 text_files=state.get("text_encoder_files"),
                                 image_files=state.get("image_encoder_files"))
    except (UnknownEncoderError, WeightsNotFoundError) as exc:
        raise type(exc)(f"cannot rebuild the model of {path}: {exc}") from exc
    lora_rank = int(config.get("lora_rank", 0))
    adapt_towers(model, lora_rank, config)  # --lora-rank: the adapters the checkpoint holds
    weights = full_model_state(state, path, files)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: {first}") from exc
    if lora_rank:
        check_base(model, state.get("lora"), path)
        merge_adapters(model)  # predict.py, the gallery and the export run the plain, merged model
    if class_texts is not None:
        model.set_class_texts(class_texts)
    model.to(device).eval()
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    temperature = float(state.get("temperature", 1.0))
    fold_model = FoldModel.prepare(model, fold, temperature)
    meta = {"class_names": list(state["class_names"]), "img_size": img_size,
            "config": config, "epoch": state.get("epoch"), "file": path.name, "temperature": temperature}
    return fold_model, meta


# ---------------------------------------------------------------------------------------------
# A run folder's fold models (predict.py, python -m export)
# ---------------------------------------------------------------------------------------------
class RunModelsError(UserError, ValueError):
    """A run folder whose fold models cannot be used as asked; the message is meant for the user."""


def checkpoint_paths(run_dir: RunDir, fold: int | None, allow_unfinished: bool | None,
                     flag: str = "--run-dir") -> list[tuple[int, Path]]:
    """(fold, checkpoint) of the requested folds: ``checkpoint_best.pth``, else ``checkpoint_latest.pth``.

    An unfinished run is refused unless ``allow_unfinished``: its best checkpoints may still be the
    untrained epoch 0 and some folds may be missing (None: the caller offers no --allow-unfinished).
    A run trained with ``--no-save-best`` has only the latest checkpoints of finished folds: they
    are its final models and are used then. ``flag`` names the run folder in messages.
    """
    if not run_dir.path.is_dir():
        raise RunModelsError(f"{flag} {run_dir.path} does not exist or is not a folder")
    found = {k: path for k in run_dir.fold_numbers() if (path := run_dir.model_checkpoint(k)) is not None}
    if not found:
        raise RunModelsError(f"{flag} {run_dir.path} holds no fold_K/checkpoint_best.pth: not a train_clip run "
                             "folder")
    if fold is not None:
        if fold not in found:
            raise RunModelsError(f"--fold {fold}: {run_dir.path} has no checkpoint for fold {fold} (folds: "
                                 f"{', '.join(map(str, sorted(found)))})")
        found = {fold: found[fold]}
    check_finished(run_dir, allow_unfinished, flag)
    return sorted(found.items())


def check_finished(run_dir: RunDir, allow_unfinished: bool | None, flag: str = "--run-dir") -> None:
    unfinished = run_dir.unfinished_folds()
    missing_summary = not run_dir.summary.is_file()
    if not (unfinished or missing_summary):
        return
    what = (f"fold(s) {', '.join(map(str, unfinished))} have no result.json" if unfinished
            else f"it has no {run_dir.summary.name}")
    if not allow_unfinished:
        way_out = "" if allow_unfinished is None else ", or pass --allow-unfinished"
        raise RunModelsError(f"{flag} {run_dir.path} is not a finished run ({what}): its checkpoints are not "
                             f"the final models; finish it with train_clip.py --resume{way_out}")
    log.warning("--allow-unfinished: %s is not a finished run (%s)", run_dir.path, what)


@dataclass
class RunModels:
    """A run's fold models and the metadata of their checkpoints (:func:`load_fold_model`'s), in fold order."""

    models: list[FoldModel]
    metas: list[dict]

    @property
    def class_names(self) -> list[str]:
        return self.metas[0]["class_names"]

    @property
    def img_size(self) -> int:
        return self.metas[0]["img_size"]

    @property
    def config(self) -> dict:
        return self.metas[0]["config"]


def load_models(checkpoints: Sequence[tuple[int, Path]], device: torch.device,
                class_texts: list[list[str]] | None) -> RunModels:
    """Every fold model of ``checkpoints``; they must agree on classes and input size."""
    models, metas = [], []
    files = SharedFiles()  # the run's frozen_towers.pth, read once for every fold
    for number, path in checkpoints:
        fold_model, meta = load_fold_model(number, path, device, class_texts, files)
        describe_fold_model(number, meta)
        if metas and (meta["class_names"], meta["img_size"]) != (metas[0]["class_names"], metas[0]["img_size"]):
            raise RunModelsError(f"{path} has other classes or input size than fold {models[0].fold}'s "
                                 "checkpoint; the fold models are not from one run")
        models.append(fold_model)
        metas.append(meta)
    return RunModels(models, metas)


def describe_fold_model(fold: int, meta: dict) -> None:
    """Say which checkpoint a fold uses, and warn when it is the untrained model of epoch 0."""
    log.info("fold %d: %s (epoch %s)", fold, meta["file"], meta["epoch"])
    if meta["epoch"] == 0:
        log.warning("fold %d: its model is epoch 0, the untrained (zero-shot) model: training never improved "
                    "on it", fold)
