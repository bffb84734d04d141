"""The exported graph computes predict.py's ensemble (training.ensemble.ensemble_probs), temperature included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.graph import ExportedClassifier
from tests.equivalence import FLOAT32_EPS
from tests.export.fold_models import CLASS_NAMES, IMG, tiny_fold_models
from training.ensemble import ensemble_probs



def test_the_graph_is_predict_pys_ensemble_with_each_folds_temperature(tiny_text_encoder: Path) -> None:
    models = tiny_fold_models(tiny_text_encoder, temperatures=(0.5, 2.0))
    torch.manual_seed(0)
    images = torch.randn(6, 3, IMG, IMG)
    expected = ensemble_probs(models, images, torch.device("cpu"), None)
    with torch.no_grad():
        exported = ExportedClassifier(models)(images).numpy()
    # Both compute the same float32 logits (CLIPClassifier.logits); predict.py then takes the softmax
    # in float32 and re-softmaxes log p / T in float64, the graph softmaxes logits / T in float32:
    # a few float32 ulps of each probability (<= 1) per class.
    tolerance = 10 * len(CLASS_NAMES) * float(FLOAT32_EPS)
    np.testing.assert_allclose(exported, expected, rtol=0, atol=tolerance)
    # The temperatures matter by far more than that: the same graph without them is another model.
    for m in models:
        m.temperature = 1.0
    with torch.no_grad():
        untempered = ExportedClassifier(models)(images).numpy()
    assert np.abs(untempered - expected).max() > 100 * tolerance


def test_one_fold_is_that_folds_model(tiny_text_encoder: Path) -> None:
    models = tiny_fold_models(tiny_text_encoder)
    images = torch.randn(4, 3, IMG, IMG)
    with torch.no_grad():
        only_second = ExportedClassifier(models[1:])(images).numpy()
    expected = ensemble_probs(models[1:], images, torch.device("cpu"), None)
    np.testing.assert_allclose(only_second, expected, rtol=0, atol=10 * len(CLASS_NAMES) * float(FLOAT32_EPS))
    assert np.abs(only_second - ensemble_probs(models, images, torch.device("cpu"), None)).max() > 1e-3
