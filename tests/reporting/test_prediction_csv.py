"""The predictions CSV that predict.py and the exported model's runner both write."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from reporting.prediction_csv import prediction_columns, write_predictions


def test_one_row_per_image_with_the_most_probable_class_and_six_decimals(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    probs = np.array([[0.1, 0.7, 0.2], [0.5000004, 0.25, 0.2499996]])
    write_predictions(str(output), ["a/1.png", "股骨/2.dcm"], ["x", "柄", "z"], probs)
    with output.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == prediction_columns(["x", "柄", "z"]) == ["path", "predicted_class", "prob_x", "prob_柄", "prob_z"]
    assert rows[1] == ["a/1.png", "柄", "0.100000", "0.700000", "0.200000"]
    assert rows[2] == ["股骨/2.dcm", "x", "0.500000", "0.250000", "0.250000"]
