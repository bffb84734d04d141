"""``report.md`` and ``report.zh.md`` of a run: the summary table, per-class results and the pictures together.

:func:`write_plots` draws the pictures into ``OUTPUT_DIR/plots/``; :func:`write_report` writes
the Markdown page that shows them, in English or Chinese (the same code: each sentence is a phrase
of :mod:`reporting.phrases`). Both take the run's :class:`~reporting.run_summary.RunSummary`.
``python -m reporting.report OUTPUT_DIR [--report-lang en|zh|both]`` rebuilds them from the files
of a finished run (for runs made before reports existed, or after deleting ``plots/``); the
languages default to the run's own ``--report-lang``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from reporting.gallery import gallery_section
from reporting.methods import methods_section
from reporting.patients import patient_table
from reporting.phrases import ENGLISH, REPORT_LANGS, Phrases, report_languages
from reporting.plots import (plot_confusion_matrix, plot_learning_curves, plot_reliability_diagram,
                             plot_roc_curves)
from reporting.summary import (interval_note, operating_point_note, per_class_table, pooled_name, selection_note,
                               summary_table)
from reporting.run_summary import RunSummary, read_summary
from reporting.tables import render_markdown
from utils.errors import UserError, exit_status
from utils.io import atomic_write, read_json
from utils.logging_setup import setup_logging
from utils.run_dir import PLOTS_DIR, RunDir

log = logging.getLogger("train_clip.report")

DEFAULT_REPORT_LANG = "both"  # --report-lang's default (training/config.py), also for runs made before it


class ReportError(UserError, ValueError):
    """A run's files cannot make a report (ValueError too: the trainer reports those and goes on)."""


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------
def write_plots(run_dir: str | os.PathLike, summary: RunSummary,
                histories: Mapping[int, Sequence[Mapping[str, Any]]], oof_y_true: Sequence[int] | np.ndarray,
                oof_probs: np.ndarray) -> dict[str, str]:
    """Draw every picture into ``run_dir/plots/``; returns {name: path relative to ``run_dir``}.

    Learning curves need ``histories`` (fold number → history rows) and are skipped without
    them; the confusion matrix comes from ``summary.oof``; the ROC curves from the
    out-of-fold labels and probabilities, and so does the reliability diagram (calibration,
    next to the ECE). A held-out test set adds its own confusion matrix.
    """
    plots_dir = RunDir(Path(run_dir)).plots
    names = summary.class_names
    pooled = pooled_name(summary)
    made: dict[str, str] = {}

    def target(name: str) -> Path:
        made[name] = f"{PLOTS_DIR}/{name}.png"  # report.md links it relative to the run folder
        return plots_dir / f"{name}.png"

    if histories:
        plot_learning_curves(histories, summary.monitor, target("learning_curves"), summary.selection.on)
    plot_confusion_matrix(summary.oof["confusion_matrix"], names, target("confusion_matrix"),
                          title=f"Confusion matrix ({pooled})")
    plot_roc_curves(oof_y_true, oof_probs, names, target("roc_curves"),
                    title=f"One-vs-rest ROC curves ({pooled})")
    plot_reliability_diagram(oof_y_true, oof_probs, target("reliability_diagram"),
                             title=f"Reliability diagram ({pooled})")
    test = summary.section("test")
    if test is not None and "confusion_matrix" in test:
        plot_confusion_matrix(test["confusion_matrix"], names, target("test_confusion_matrix"),
                              title="Confusion matrix (held-out test set, fold ensemble)")
    return made


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _relative(path: str, run_dir: Path) -> str:
    as_path = Path(path)
    if as_path.is_absolute():
        as_path = Path(os.path.relpath(as_path, run_dir))
    return as_path.as_posix()


def _introduction(summary: RunSummary, t: Phrases) -> list[str]:
    names = summary.class_names
    design = t("design_cv", n=summary.n_splits) if summary.is_cross_validation else t("design_holdout")
    on = summary.selection.on
    chosen = t("chosen_last") if on == "last" else t(f"chosen_{on}", monitor=summary.monitor)
    seconds = math.nan if summary.wall_time_s is None else summary.wall_time_s
    return [t("title", image=summary.image_encoder, text=summary.text_encoder), "",
            t("introduction", design=design, n=len(names), names=t.join(names), chosen=chosen, seconds=seconds), ""]


def _summary_section(summary: RunSummary, t: Phrases) -> list[str]:
    folds = summary.folds
    note = selection_note(summary, t) + (t("test_note") if summary.section("test") is not None else t("no_test_note"))
    untrained = [str(f.fold) for f in folds if f.best_epoch == 0]
    if untrained:
        note += t("untrained_note", folds=t.join(untrained))
    statistics = [line for line in (interval_note(summary, t), operating_point_note(summary, t)) if line]
    label = [t("all_numbers_optimistic", label=t("optimistic_label")), ""] if summary.selection.optimistic else []
    epochs = t.join(t("fold_epoch", fold=f.fold, epoch=f.best_epoch) for f in folds)
    return [t("summary_heading"), "", *label, render_markdown(summary_table(summary, t)), "",
            t("best_epochs", epochs=epochs), "", note, ""] + [line for text in statistics for line in (text, "")]


def _per_class_sections(summary: RunSummary, t: Phrases) -> list[str]:
    names = summary.class_names
    lines = [t("per_class_heading", pooled=pooled_name(summary, t)), "",
             render_markdown(per_class_table(summary.oof, names, summary.section("oof_per_class_ci"), t))]
    test = summary.section("test")
    if test is not None and "per_class" in test:
        lines += ["", t("per_class_test_heading"), "",
                  render_markdown(per_class_table(test, names, summary.section("test_per_class_ci"), t))]
    return lines


def _patient_section(summary: RunSummary, t: Phrases) -> list[str]:
    """Folds grouped by patient: the pooled out-of-fold results per patient (mean of its images)."""
    patients = summary.section("oof_patient")
    if patients is None:
        return []
    return ["", t("per_patient_heading"), "", t("per_patient_note", n=summary.section("n_groups")), "",
            render_markdown(patient_table(patients, t))]


def render_report(summary: RunSummary, plots: Mapping[str, str], run_dir: Path,
                  closing: Sequence[str] = (), t: Phrases = ENGLISH) -> str:
    lines = (_introduction(summary, t) + _summary_section(summary, t) + _patient_section(summary, t)
             + _per_class_sections(summary, t))
    for key, path in plots.items():
        caption = t(f"plot_{key}")
        lines += ["", f"## {caption}", "", f"![{caption}]({_relative(path, run_dir)})"]
    lines += gallery_section(RunDir(run_dir), t)
    if closing:
        lines += ["", *closing]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike, summary: RunSummary, plots: Mapping[str, str],
                 closing: Sequence[str] = (), t: Phrases = ENGLISH) -> Path:
    """Write ``run_dir/report.md`` (``report.zh.md`` in Chinese); ``plots`` maps names to PNG paths (relative to
    ``run_dir`` or absolute); ``closing`` are Markdown lines at the end (the methods section)."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).report_in(t.lang)
    with atomic_write(path, "w") as handle:
        handle.write(render_report(summary, plots, run_dir, closing, t))
    return path


def write_reports(run_dir: str | os.PathLike, summary: RunSummary, plots: Mapping[str, str],
                  closing: Callable[[Phrases], Sequence[str]], report_lang: str = DEFAULT_REPORT_LANG) -> list[Path]:
    """The report in each language of ``report_lang`` (en, zh or both); ``closing(phrases)`` is its methods section."""
    return [write_report(run_dir, summary, plots, closing(Phrases(lang)), Phrases(lang))
            for lang in report_languages(report_lang)]


# ---------------------------------------------------------------------------------------------
# Rebuilding from a finished run's files
# ---------------------------------------------------------------------------------------------
def load_histories(run_dir: str | os.PathLike) -> dict[int, list[dict[str, Any]]]:
    """``fold_K/history.json`` of every fold that has one, by fold number."""
    run = RunDir(Path(run_dir))
    return {fold: read_json(run.history(fold), "history file")
            for fold in run.fold_numbers() if run.history(fold).is_file()}


def load_oof_predictions(path: str | os.PathLike, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """True labels and probabilities from ``oof_predictions.csv`` (columns true_class, prob_<class>)."""
    _, y_true, probs = load_prediction_rows(path, class_names)
    return y_true, probs


def load_prediction_rows(path: str | os.PathLike,
                         class_names: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, true labels and probabilities of a predictions CSV (columns path, true_class, prob_<class>)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"out-of-fold predictions not found: {path}")
    index = {name: k for k, name in enumerate(class_names)}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [f"prob_{name}" for name in class_names]
    missing = [c for c in ["path", "true_class"] + columns if rows and c not in rows[0]]
    if not rows or missing:
        raise ReportError(f"{path} has no rows or lacks column(s) {', '.join(missing)}")
    try:
        y_true = np.array([index[row["true_class"]] for row in rows], dtype=np.int64)
    except KeyError as exc:
        raise ReportError(f"{path}: true class {exc} is not one of the run's classes") from None
    try:
        probs = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    except (TypeError, ValueError):  # an empty or non-numeric cell: a torn or hand-edited file
        raise ReportError(f"{path}: a probability is not a number") from None
    return [row["path"] for row in rows], y_true, probs


def report_from_run_dir(run_dir: str | os.PathLike, report_lang: str | None = None) -> list[Path]:
    """Redraw the plots and rewrite the report(s) from ``cv_summary.json`` and its companions.

    ``report_lang`` (en, zh or both) defaults to the run's own --report-lang.
    """
    run = RunDir(Path(run_dir))
    summary = read_summary(run.summary)
    config = read_json(run.config, "run configuration") if run.config.is_file() else {}
    try:
        y_true, probs = load_oof_predictions(run.oof_predictions, summary.class_names)
        plots = write_plots(run.path, summary, load_histories(run.path), y_true, probs)
        return write_reports(run.path, summary, plots, lambda t: methods_of(run, summary, t),
                             report_lang or config.get("report_lang", DEFAULT_REPORT_LANG))
    except KeyError as exc:  # inside a section or the pooled metrics, which the schema does not check
        raise ReportError(f"{run.summary} lacks {exc}: not a train_clip run summary") from None


def methods_of(run: RunDir, summary: RunSummary, t: Phrases = ENGLISH) -> list[str]:
    """The methods section from config.json and folds.json; none when either is missing (e.g. a copied summary)."""
    if not (run.config.is_file() and run.folds.is_file()):
        return []
    try:
        return methods_section(read_json(run.config, "run configuration"), read_json(run.folds, "folds file"),
                               summary, t)
    except (KeyError, TypeError) as exc:  # a run from a version whose config lacked a setting
        log.warning("%s without its methods section: the run's files lack %s", run.report_in(t.lang).name, exc)
        return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reporting.report",
                                     description="Rebuild plots/ and report.md / report.zh.md of a finished "
                                                 "train_clip run.")
    parser.add_argument("run_dir", help="The run's --output-dir (holds cv_summary.json).")
    parser.add_argument("--report-lang", choices=REPORT_LANGS,
                        help="Report language(s): en (report.md), zh (report.zh.md) or both (default: the run's "
                             "--report-lang).")
    args = parser.parse_args(argv)
    setup_logging(None)
    return exit_status(lambda: "".join(f"wrote {path}\n" for path in report_from_run_dir(args.run_dir,
                                                                                        args.report_lang)))


if __name__ == "__main__":
    sys.exit(main())
