"""The predictions CSV that ``predict.py`` and the exported model's runner (``python -m export.predict``)
write: one home for its columns, torch-free so that the runner can import it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utils.io import write_csv


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    return ["path", "predicted_class"] + [f"prob_{name}" for name in class_names]


def write_predictions(path: str, names: Sequence[str], class_names: Sequence[str], probs: np.ndarray) -> None:
    """One row per image: its name, the class of highest probability, then every class's probability."""
    write_csv(path, prediction_columns(class_names),
              [[name, class_names[int(p.argmax())]] + [f"{v:.6f}" for v in p] for name, p in zip(names, probs)])
