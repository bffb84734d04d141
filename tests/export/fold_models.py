"""Tiny fold models built in a second, without a run: what tests/export's unit tests export."""
from __future__ import annotations

from pathlib import Path

import torch

from models.clip_model import build_clip_model
from training.ensemble import FoldModel, RunModels

IMG = 32
CLASS_NAMES = ["cat_a", "股骨柄B", "cat_c"]
CLASS_TEXTS = [["a bar on the left"], ["a bar in the middle", "middle bar"], ["a bar on the right"]]


def tiny_fold_models(text_encoder: Path, temperatures: tuple[float, ...] = (1.0, 1.0)) -> list[FoldModel]:
    """One random StarNet classifier per temperature, each with its own seed (so the folds differ)."""
    models = []
    for fold, temperature in enumerate(temperatures, start=1):
        torch.manual_seed(fold)
        model = build_clip_model("starnet_s050", f"hf:{text_encoder}", 8, 0.07, CLASS_TEXTS, load_pretrained=False,
                                 img_size=IMG)
        models.append(FoldModel.prepare(model, fold, temperature))
    return models


def run_models(fold_models: list[FoldModel], text_encoder: Path, **config: object) -> RunModels:
    """training.ensemble.load_models's result for ``fold_models`` as a run would have saved them."""
    settings = {"image_encoder": "starnet_s050", "text_encoder": f"hf:{text_encoder}", "img_size": IMG,
                "dicom_window": "auto", "dicom_first_frame": False, **config}
    metas = [{"class_names": CLASS_NAMES, "img_size": IMG, "config": settings, "epoch": 1,
              "file": "checkpoint_best.pth", "temperature": m.temperature} for m in fold_models]
    return RunModels(fold_models, metas)
