"""``report.md`` of a run: the summary table, per-class results and the pictures together.

:func:`write_plots` draws the pictures into ``OUTPUT_DIR/plots/``; :func:`write_report` writes
the Markdown page that shows them. Both take the ``cv_summary.json`` dictionary that
``train_clip.summarise`` returns. ``python -m reporting.report OUTPUT_DIR`` rebuilds both from the
files of a finished run (for runs made before reports existed, or after deleting ``plots/``).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reporting.metrics import scalar_metrics
from reporting.plots import plot_confusion_matrix, plot_learning_curves, plot_roc_curves
from utils.io import atomic_write, read_json
from utils.logging_setup import setup_logging

PLOTS_DIR = "plots"
REPORT_FILE = "report.md"
# Human names of the scalar metrics; unknown keys are shown as they are.
METRIC_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "roc_auc": "macro ROC-AUC (one-vs-rest)",
    "top3_accuracy": "top-3 accuracy",
    "ece": "expected calibration error (lower is better)",
}
PLOT_CAPTIONS = {
    "learning_curves": "Learning curves",
    "confusion_matrix": "Confusion matrix",
    "roc_curves": "ROC curves",
    "test_confusion_matrix": "Held-out test set confusion matrix",
}


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------
def _pooled_name(summary: Mapping[str, Any]) -> str:
    return "pooled out-of-fold" if summary.get("mode", "cv") == "cv" else "validation"


def test_metrics_of(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The held-out test metrics of ``summary['test']`` (flat, or nested under ``metrics``), if any."""
    test = summary.get("test")
    if not isinstance(test, dict):
        return None
    return test["metrics"] if isinstance(test.get("metrics"), dict) else test


def write_plots(run_dir: str | os.PathLike, summary: Mapping[str, Any],
                histories: Mapping[int, Sequence[Mapping[str, Any]]], oof_y_true: Sequence[int] | np.ndarray,
                oof_probs: np.ndarray) -> dict[str, str]:
    """Draw every picture into ``run_dir/plots/``; returns {name: path relative to ``run_dir``}.

    Learning curves need ``histories`` (fold number → history rows) and are skipped without
    them; the confusion matrix comes from ``summary['oof']``; the ROC curves from the
    out-of-fold labels and probabilities. A held-out test set adds its own confusion matrix.
    """
    run_dir = Path(run_dir)
    names = list(summary["class_names"])
    pooled = _pooled_name(summary)
    made: dict[str, str] = {}

    def target(name: str) -> Path:
        made[name] = f"{PLOTS_DIR}/{name}.png"
        return run_dir / made[name]

    if histories:
        plot_learning_curves(histories, summary["monitor"], target("learning_curves"))
    plot_confusion_matrix(summary["oof"]["confusion_matrix"], names, target("confusion_matrix"),
                          title=f"Confusion matrix ({pooled})")
    plot_roc_curves(oof_y_true, oof_probs, names, target("roc_curves"),
                    title=f"One-vs-rest ROC curves ({pooled})")
    test = test_metrics_of(summary)
    if test is not None and "confusion_matrix" in test:
        plot_confusion_matrix(test["confusion_matrix"], names, target("test_confusion_matrix"),
                              title="Confusion matrix (held-out test set, fold ensemble)")
    return made


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _number(value: Any) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}"


def _cell(text: Any) -> str:
    # A '|' inside a cell would end it.
    return str(text).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def summary_table(summary: Mapping[str, Any]) -> list[str]:
    """Each scalar metric: mean ± std over folds, each fold, the pooled predictions and the test set."""
    folds = summary["folds"]
    pooled = scalar_metrics(summary["oof"])
    test = test_metrics_of(summary)
    test_scalars = scalar_metrics(test) if test is not None else None
    keys = list(summary["mean"]) or list(pooled)
    header = ["metric", "mean ± std"] + [f"fold {f['fold']}" for f in folds] + [_pooled_name(summary)]
    if test_scalars is not None:
        header.append("held-out test")
    rows = []
    for key in keys:
        label = METRIC_LABELS.get(key, key) + (" (monitored)" if key == summary.get("monitor") else "")
        row = [label, f"{_number(summary['mean'].get(key))} ± {_number(summary['std'].get(key))}"]
        row += [_number(f["metrics"].get(key)) for f in folds]
        row.append(_number(pooled.get(key)))
        if test_scalars is not None:
            row.append(_number(test_scalars.get(key)))
        rows.append(row)
    return _table(header, rows)


def per_class_table(metrics: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    rows = [[name, _number(c["precision"]), _number(c["recall"]), _number(c["f1"]), str(c["support"])]
            for name, c in zip(class_names, metrics["per_class"])]
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _relative(path: str, run_dir: Path) -> str:
    as_path = Path(path)
    if as_path.is_absolute():
        as_path = Path(os.path.relpath(as_path, run_dir))
    return as_path.as_posix()


def render_report(summary: Mapping[str, Any], plots: Mapping[str, str], run_dir: Path) -> str:
    names = list(summary["class_names"])
    folds = summary["folds"]
    pooled = _pooled_name(summary)
    cv = summary.get("mode", "cv") == "cv"
    lines = [f"# Results: {summary.get('image_encoder', '?')} + {summary.get('text_encoder', '?')}", ""]
    design = f"{summary['n_splits']}-fold cross-validation" if cv else "one train/validation split"
    lines += [f"{design}, {len(names)} classes ({', '.join(names)}); the best epoch of each fold is chosen "
              f"on **{summary['monitor']}**; wall time {summary.get('wall_time_s', math.nan):.0f} s.", ""]
    lines += ["## Summary", ""]
    lines += summary_table(summary)
    lines += ["", "Best epochs: " + ", ".join(f"fold {f['fold']}: {f['best_epoch']}" for f in folds) + ".", ""]
    note = ("Fold scores are measured at the epoch chosen on those same validation images, so they "
            "lean optimistic.")
    if test_metrics_of(summary) is not None:
        note += (" The held-out test column is the ensemble of the fold models (mean probabilities) on "
                 "images no fold saw in training or model selection: it is the unbiased estimate.")
    else:
        note += " Hold out a test set (--test-fraction) for an unbiased estimate."
    lines += [note, ""]
    lines += [f"## Per class ({pooled})", ""]
    lines += per_class_table(summary["oof"], names)
    test = test_metrics_of(summary)
    if test is not None and "per_class" in test:
        lines += ["", "## Per class (held-out test set, fold ensemble)", ""]
        lines += per_class_table(test, names)
    for key, path in plots.items():
        caption = PLOT_CAPTIONS.get(key, key.replace("_", " ").capitalize())
        lines += ["", f"## {caption}", "", f"![{caption}]({_relative(path, run_dir)})"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike, summary: Mapping[str, Any], plots: Mapping[str, str]) -> Path:
    """Write ``run_dir/report.md``; ``plots`` maps names to PNG paths (relative to ``run_dir`` or absolute)."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_FILE
    with atomic_write(path, "w") as handle:
        handle.write(render_report(summary, plots, run_dir))
    return path


# ---------------------------------------------------------------------------------------------
# Rebuilding from a finished run's files
# ---------------------------------------------------------------------------------------------
def load_histories(run_dir: str | os.PathLike) -> dict[int, list[dict[str, Any]]]:
    """``fold_K/history.json`` of every fold that has one, by fold number."""
    histories = {}
    for path in Path(run_dir).glob("fold_*/history.json"):
        suffix = path.parent.name.removeprefix("fold_")
        if suffix.isdigit():
            histories[int(suffix)] = read_json(path, "history file")
    return dict(sorted(histories.items()))


def load_oof_predictions(path: str | os.PathLike, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """True labels and probabilities from ``oof_predictions.csv`` (columns true_class, prob_<class>)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"out-of-fold predictions not found: {path}")
    index = {name: k for k, name in enumerate(class_names)}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [f"prob_{name}" for name in class_names]
    missing = [c for c in ["true_class"] + columns if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path} has no rows or lacks column(s) {', '.join(missing)}")
    try:
        y_true = np.array([index[row["true_class"]] for row in rows], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{path}: true class {exc} is not one of the run's classes") from exc
    probs = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    return y_true, probs


def report_from_run_dir(run_dir: str | os.PathLike) -> Path:
    """Redraw the plots and rewrite ``report.md`` from ``cv_summary.json`` and its companions."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "cv_summary.json", "run summary")
    y_true, probs = load_oof_predictions(run_dir / "oof_predictions.csv", summary["class_names"])
    plots = write_plots(run_dir, summary, load_histories(run_dir), y_true, probs)
    return write_report(run_dir, summary, plots)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reporting.report",
                                     description="Rebuild plots/ and report.md of a finished train_clip run.")
    parser.add_argument("run_dir", help="The run's --output-dir (holds cv_summary.json).")
    args = parser.parse_args(argv)
    setup_logging(None)
    try:
        path = report_from_run_dir(args.run_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {Path(args.run_dir) / 'cv_summary.json'} lacks {exc}: not a train_clip run summary",
              file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
