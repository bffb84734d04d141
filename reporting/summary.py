"""The tables of a run's ``cv_summary.json``: the metrics by fold, and the results per class.

:func:`summary_table` is the table both report.md (as Markdown) and the trainer's console
summary (:func:`format_summary_table`, as plain columns) show, so the two never disagree.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from reporting.metric_table import label_of
from reporting.metrics import scalar_metrics
from reporting.phrases import ENGLISH, Phrases
from reporting.run_summary import RunSummary
from reporting.tables import Table, format_interval, format_mean_std, format_number, render_text


def pooled_name(summary: RunSummary, t: Phrases = ENGLISH) -> str:
    """What the pooled predictions are: every fold's validation images, or the one validation split."""
    return t("pooled_cv") if summary.is_cross_validation else t("pooled_holdout")


SELECTION_SETS = {"inner": "inner validation splits", "fold": "scored validation images"}
OPTIMISTIC_LABEL = ENGLISH("optimistic_label")


def selection_note(summary: RunSummary, t: Phrases = ENGLISH) -> str:
    """One sentence on what the fold scores mean, given what chose each fold's model."""
    selection = summary.selection
    if selection.on == "inner":
        return t("selection_inner", percent=f"{100 * selection.inner_val_fraction:g}%",
                 pooled=pooled_name(summary, t))
    if selection.on == "last":
        return t("selection_last")
    label = t("optimistic_label")
    return t("selection_fold", label=label[0].upper() + label[1:])


def summary_table(summary: RunSummary, t: Phrases = ENGLISH) -> Table:
    """Each scalar metric: mean ± std over folds, each fold, the pooled predictions and the test set.

    The pooled and test columns are each followed by their 95% CI when the summary holds them.
    """
    folds = summary.folds
    header = [t("metric"), t("mean_std")] + [t("fold_column", fold=f.fold) for f in folds]
    columns: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = []
    for name, metrics, intervals in ((pooled_name(summary, t), summary.oof, summary.section("oof_ci")),
                                     (t("test_column"), summary.section("test"), summary.section("test_ci"))):
        if metrics is None:
            continue
        columns.append((metrics, intervals))
        header += [name] + ([t("with_ci", name=name, ci=t("ci_column"))] if intervals else [])
    rows = []
    # A summary without fold means (none were computed) still lists the pooled scalars.
    for key in summary.mean or scalar_metrics(summary.oof):
        label = label_of(key, t.lang) + (t("monitored") if key == summary.monitor else "")
        row = [label, format_mean_std(summary.mean.get(key), summary.std.get(key))]
        row += [format_number(f.metrics.get(key)) for f in folds]
        for metrics, intervals in columns:
            row += [format_number(metrics.get(key))] + ([format_interval(intervals.get(key))] if intervals else [])
        rows.append(row)
    return Table.labelled(header, rows)


def per_class_table(metrics: Mapping[str, Any], class_names: Sequence[str],
                    intervals: Sequence[Mapping[str, Any]] | None = None, t: Phrases = ENGLISH) -> Table:
    """Precision, sensitivity (recall), specificity, F1 and support of each class (one-vs-rest).

    ``intervals`` (one ``{"sensitivity": [low, high], "specificity": [...]}`` per class) adds their CIs.
    """
    ci = [t("ci_column")] if intervals else []
    header = [t("class"), t("precision"), t("sensitivity")] + ci + [t("specificity")] + ci + [t("f1"), t("support")]
    rows = []
    for k, (name, c) in enumerate(zip(class_names, metrics["per_class"])):
        row = [name, format_number(c["precision"]), format_number(c["recall"])]
        row += [format_interval(intervals[k]["sensitivity"])] if intervals else []
        row += [format_number(c.get("specificity"))]  # runs made before issue 12 lack it
        row += [format_interval(intervals[k]["specificity"])] if intervals else []
        rows.append(row + [format_number(c["f1"]), str(c["support"])])
    return Table.labelled(header, rows)


def interval_note(summary: RunSummary, t: Phrases = ENGLISH) -> str | None:
    """How the CIs were made (a sentence), or None when the run has none."""
    settings = summary.section("ci_settings")
    if not settings:
        return None
    unit = t("unit_group" if settings["resampled_unit"] == "group" else "unit_image")
    note = t("interval_note", method=settings["method"], n=settings["n_resamples"], unit=unit, seed=settings["seed"])
    if settings.get("percentile_fallback"):
        note += t("percentile_fallback", metrics=t.join(settings["percentile_fallback"]))
    return note + t("sentence_end")


def operating_point_note(summary: RunSummary, t: Phrases = ENGLISH) -> str | None:
    """The two-class threshold chosen on the pooled predictions, and the test set's numbers there."""
    point = summary.section("operating_point")
    if not point:
        return None
    rule = t("op_rule_inner" if "inner_sensitivity" in point else "op_rule_oof", rule=point["rule"])
    note = t("operating_point", positive=point["positive_class"], rule=rule, threshold=point["threshold"],
             sensitivity=format_number(point["sensitivity"]), specificity=format_number(point["specificity"]))
    test = summary.section("test_operating_point")
    if test:
        note += t("operating_point_test", sensitivity=format_number(test["sensitivity"]),
                  specificity=format_number(test["specificity"]))
    return note + t("sentence_end")


def format_summary_table(summary: RunSummary) -> str:
    """The summary table as plain columns for the console and the log, with the best epochs."""
    notes = [note for note in (interval_note(summary), operating_point_note(summary)) if note]
    selection = summary.selection
    chosen = (f"chosen on {summary.monitor} of the {SELECTION_SETS[selection.on]}" if selection.on != "last"
              else "the last epochs: nothing chosen")
    return "\n".join([render_text(summary_table(summary)), *notes,
                      *([OPTIMISTIC_LABEL.capitalize() + "."] if selection.optimistic else []),
                      f"best epochs: {', '.join(str(f.best_epoch) for f in summary.folds)}  "
                      f"({chosen}); wall time {summary.wall_time_s:.0f}s"])
