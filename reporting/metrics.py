"""Classification metrics of a validation pass (docs/design.md §5).

All functions take integer labels ``y_true`` of shape (N,) and class probabilities
``probs`` of shape (N, C), so that the same code scores a fold, the pooled out-of-fold
predictions and a held-out test set.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

from reporting.metric_table import TOP_K

ECE_BINS = 15


def macro_roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC over the classes that have both positives and negatives.

    A validation fold may lack a class entirely; scikit-learn then refuses the multi-class
    call, so each class is scored on its own and the defined ones are averaged.
    NaN when no class can be scored.
    """
    n_classes = probs.shape[1]
    if n_classes == 2:
        if len(np.unique(y_true)) < 2:
            return math.nan
        return float(roc_auc_score(y_true, probs[:, 1]))
    scores = []
    for k in range(n_classes):
        positives = y_true == k
        if positives.all() or not positives.any():
            continue
        scores.append(roc_auc_score(positives, probs[:, k]))
    return float(np.mean(scores)) if scores else math.nan


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: confidence-weighted gap between confidence and accuracy over equal-width bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bin_of == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` most probable."""
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Every metric of docs/design.md §5 for one set of predictions.

    Scalars (accuracy, balanced_accuracy, macro_f1, roc_auc, ece and, with more than 5
    classes, top3_accuracy: the rows of :data:`reporting.metric_table.METRICS`) sit at the top
    level; ``per_class`` (precision, recall = sensitivity, specificity, F1, support) and
    ``confusion_matrix`` are lists indexed by class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(y_true) != len(probs) or len(y_true) == 0:
        raise ValueError(f"expected N labels and (N, C) probabilities, got {y_true.shape} and {probs.shape}")
    n_classes = probs.shape[1]
    labels = list(range(n_classes))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "roc_auc": macro_roc_auc(y_true, probs),
        "ece": expected_calibration_error(y_true, probs),
    }
    if n_classes > 5:
        metrics[f"top{TOP_K}_accuracy"] = top_k_accuracy(y_true, probs, TOP_K)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    metrics["per_class"] = [
        {"precision": float(p), "recall": float(r), "specificity": s, "f1": float(f), "support": int(n)}
        for p, r, s, f, n in zip(precision, recall, specificities(matrix), f1, support)
    ]
    metrics["confusion_matrix"] = matrix.tolist()
    return metrics


def specificities(matrix: np.ndarray) -> list[float]:
    """One-vs-rest specificity of each class: of the images of other classes, the fraction not called it."""
    called = matrix.sum(axis=0) - np.diag(matrix)  # false positives
    others = matrix.sum() - matrix.sum(axis=1)
    return [float(fp_free / n) if n else 0.0 for fp_free, n in zip(others - called, others)]


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the classes present in y_true (scikit-learn's definition); silences
    # its warning about predicted classes that never occur in y_true.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The single-number entries of a metrics dict (for tables, means and standard deviations)."""
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float))}


def mean_and_std(per_fold: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one fold) of each scalar metric over folds."""
    keys = [key for key in per_fold[0] if all(key in fold for fold in per_fold)]
    mean, std = {}, {}
    for key in keys:
        values = np.array([fold[key] for fold in per_fold], dtype=np.float64)
        mean[key] = float(np.mean(values))
        std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std
