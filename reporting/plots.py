"""Pictures of a run: learning curves, confusion matrix, one-vs-rest ROC curves, reliability diagram.

Figures are plain :class:`matplotlib.figure.Figure` objects drawn by the Agg canvas: pyplot and
its global figure registry are never touched, so nothing leaks between calls or into a notebook,
and no display is needed. Settings (fonts) apply through :func:`matplotlib.rc_context` for the
duration of one picture only. Each PNG is written atomically.

Class names may be Chinese: :mod:`reporting.fonts` gives each picture a CJK fallback font when its
labels need one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from reporting.fonts import picture_fonts
from reporting.metric_table import metric
from reporting.metrics import ECE_BINS, expected_calibration_error, macro_roc_auc
from utils.io import atomic_write

DPI = 120
# Beyond this many classes the confusion-matrix cells are too small to print numbers in.
MAX_ANNOTATED_CLASSES = 20


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, out_path: str | os.PathLike) -> Path:
    """Render ``figure`` to ``out_path`` atomically (a crash leaves no half-written PNG)."""
    out_path = Path(out_path)
    with atomic_write(out_path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=DPI)
    return out_path


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------
def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that hold a finite ``key`` (the zero-shot epoch 0 has no train_loss)."""
    epochs, values = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "epoch" in row:
            epochs.append(row["epoch"])
            values.append(float(value))
    return epochs, values


def plot_learning_curves(histories: Mapping[int, Sequence[Mapping[str, Any]]], monitor: str,
                         out_path: str | os.PathLike, selection: str = "fold") -> Path:
    """Per fold: training and validation loss (left) and the monitored metric (right) by epoch.

    ``histories`` maps a fold number to its ``history.json`` rows. Keys missing from a row, or
    NaN, are left out of that curve, so an epoch-0 (zero-shot) row shows on the validation
    curves only. The star marks the epoch ``selection`` (--select-on) chose: the best of the inner
    validation curve (dotted; the validation curve is then only scored, not used for choosing), the
    last epoch, or the best of the validation curve itself.
    """
    watched = metric(monitor, "monitored metric")
    with picture_fonts([]):
        figure = new_figure(11, 4.2)
        loss_ax, metric_ax = figure.subplots(1, 2)
        colors = matplotlib.colormaps["tab10"]
        scored = " (not used for choosing)" if selection != "fold" else ""
        for i, (fold, history) in enumerate(sorted(histories.items())):
            color = colors(i % 10)
            for key, style, label in (("train_loss", "-", "train"), ("val_loss", "--", "validation"),
                                      ("inner_val_loss", ":", "inner validation")):
                epochs, values = _series(history, key)
                if epochs:
                    loss_ax.plot(epochs, values, style, color=color, marker=".",
                                 label=f"fold {fold} {label}")
            epochs, values = _series(history, monitor)
            inner_epochs, inner_values = _series(history, f"inner_{monitor}")
            if inner_epochs:
                metric_ax.plot(inner_epochs, inner_values, ":", color=color, marker=".",
                               label=f"fold {fold} inner validation (chooses)")
            if epochs:
                metric_ax.plot(epochs, values, "-", color=color, marker=".", label=f"fold {fold}{scored}")
                if selection == "inner" and inner_epochs:
                    chosen = inner_epochs[watched.best_of(inner_values)]
                elif selection == "last":
                    chosen = epochs[-1]
                else:
                    chosen = epochs[watched.best_of(values)]
                if chosen in epochs:
                    metric_ax.plot(chosen, values[epochs.index(chosen)], "*", color=color, markersize=12)
        loss_ax.set(title="Loss", xlabel="epoch", ylabel="loss")
        metric_ax.set(title=f"Validation {watched.label} (★ chosen epoch)", xlabel="epoch", ylabel=watched.label)
        for ax in (loss_ax, metric_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        return save_png(figure, out_path)


# ---------------------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------------------
def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall of each true class on the diagonal); empty rows stay 0."""
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=np.float64), where=sums > 0)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str],
                          out_path: str | os.PathLike, title: str = "Confusion matrix") -> Path:
    """Counts (left) and row-normalised fractions (right); rows are true classes, columns predictions."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {n} class names")
    fractions = row_normalise(counts)
    side = max(4.0, 0.55 * n + 2.5)
    with picture_fonts(class_names):
        figure = new_figure(2 * side + 1, side)
        figure.suptitle(title)
        for ax, values, subtitle, fmt, vmax in (
                (figure.add_subplot(1, 2, 1), counts, "counts", "d", max(int(counts.max()), 1)),
                (figure.add_subplot(1, 2, 2), fractions, "fraction of each true class", ".2f", 1.0)):
            image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
            figure.colorbar(image, ax=ax, shrink=0.8)
            ax.set(title=subtitle, xlabel="predicted class", ylabel="true class",
                   xticks=range(n), yticks=range(n))
            ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
            ax.set_yticklabels(class_names)
            if n <= MAX_ANNOTATED_CLASSES:
                for (row, col), value in np.ndenumerate(values):
                    ax.text(col, row, format(value, fmt), ha="center", va="center", fontsize="small",
                            color="white" if value > 0.6 * vmax else "black")
        return save_png(figure, out_path)


# ---------------------------------------------------------------------------------------------
# ROC curves
# ---------------------------------------------------------------------------------------------
def plot_roc_curves(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                    out_path: str | os.PathLike, title: str = "One-vs-rest ROC curves") -> Path:
    """One ROC curve per class (that class against all others), its AUC in the legend.

    A class without both positives and negatives has no ROC curve; the legend says so.
    The title carries the macro AUC as ``cv_summary.json`` computes it.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(class_names)):
        raise ValueError(f"expected {len(y_true)} x {len(class_names)} probabilities, got {probs.shape}")
    with picture_fonts(class_names):
        figure = new_figure(6.5, 5.5)
        ax = figure.add_subplot()
        colors = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
        for k, name in enumerate(class_names):
            positives = y_true == k
            if positives.all() or not positives.any():
                ax.plot([], [], color="grey", label=f"{name} (not defined: one-sided)")
                continue
            fpr, tpr, _ = roc_curve(positives, probs[:, k])
            ax.plot(fpr, tpr, color=colors(k % colors.N), label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        macro = macro_roc_auc(y_true, probs)
        ax.set(title=f"{title}\nmacro AUC {macro:.3f}", xlabel="false positive rate",
               ylabel="true positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
        return save_png(figure, out_path)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReliabilityBins:
    """The ECE's equal-width confidence bins that hold images: left edges, accuracy, mean confidence, counts."""

    left: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray


def reliability_bins(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> ReliabilityBins:
    """Top-label confidence binned exactly as :func:`reporting.metrics.expected_calibration_error` bins it."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bin_of = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, ECE_BINS - 1)
    counts = np.bincount(bin_of, minlength=ECE_BINS)
    filled = counts > 0
    return ReliabilityBins(edges[:-1][filled],
                           np.bincount(bin_of, weights=correct, minlength=ECE_BINS)[filled] / counts[filled],
                           np.bincount(bin_of, weights=confidence, minlength=ECE_BINS)[filled] / counts[filled],
                           counts[filled])


def plot_reliability_diagram(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, out_path: str | os.PathLike,
                             title: str = "Reliability diagram") -> Path:
    """Accuracy against top-label confidence in the ECE's bins (top), and how many images each holds.

    A calibrated model's bars reach the diagonal; the shaded gaps are what the ECE (in the title)
    averages, weighted by the images in each bin.
    """
    bins = reliability_bins(y_true, probs)
    width = 1.0 / ECE_BINS
    with picture_fonts([]):
        figure = new_figure(5.5, 6.5)
        top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        top.bar(bins.left, bins.accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
        top.bar(bins.left, bins.confidence - bins.accuracy, bottom=bins.accuracy, width=width, align="edge",
                facecolor=(1.0, 0.6, 0.6, 0.5), edgecolor="tab:red", hatch="//", linewidth=0,
                label="gap to the mean confidence")
        top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        ece = expected_calibration_error(np.asarray(y_true), np.asarray(probs, dtype=np.float64))
        top.set(title=f"{title}\nECE {ece:.3f} ({ECE_BINS} bins)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        top.legend(loc="upper left", fontsize="small")
        bottom.bar(bins.left, bins.counts, width=width, align="edge", color="grey", edgecolor="black")
        bottom.set(xlabel="confidence (top-class probability)", ylabel="images")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        return save_png(figure, out_path)
