"""The tables of a run's ``cv_summary.json``: the metrics by fold, and the results per class.

:func:`summary_table` is the table both report.md (as Markdown) and the trainer's console
summary (:func:`format_summary_table`, as plain columns) show, so the two never disagree.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from reporting.metric_table import label_of
from reporting.metrics import scalar_metrics
from reporting.tables import Table, format_interval, format_mean_std, format_number, render_text

POOLED_CV = "pooled out-of-fold"
POOLED_HOLDOUT = "validation"
TEST_COLUMN = "held-out test"
CI_COLUMN = "95% CI"


def is_cross_validation(summary: Mapping[str, Any]) -> bool:
    return summary.get("mode", "cv") == "cv"


def pooled_name(summary: Mapping[str, Any]) -> str:
    """What the pooled predictions are: every fold's validation images, or the one validation split."""
    return POOLED_CV if is_cross_validation(summary) else POOLED_HOLDOUT


# A summary without "selection" comes from a run made before issue 21: it chose on the scored fold.
SELECTION_SETS = {"inner": "inner validation splits", "fold": "scored validation images"}
FOLD_SELECTION = {"on": "fold", "inner_val_fraction": None, "optimistic": True}
OPTIMISTIC_LABEL = "selected on the scored fold — optimistic"


def selection_of(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What chose each fold's model: ``on`` (inner, last or fold), ``inner_val_fraction``, ``optimistic``."""
    return dict(summary.get("selection") or FOLD_SELECTION)


def selection_note(summary: Mapping[str, Any]) -> str:
    """One sentence on what the fold scores mean, given what chose each fold's model."""
    selection = selection_of(summary)
    pooled = pooled_name(summary)
    if selection["on"] == "inner":
        return (f"Each fold's epoch (and anything else chosen: early stopping, temperature, threshold) was chosen "
                f"on an inner validation split of its training images (at least "
                f"{100 * selection['inner_val_fraction']:g}%); the validation images were only scored, so the fold "
                f"and {pooled} scores carry no selection bias.")
    if selection["on"] == "last":
        return ("No epoch was chosen: each fold's model is the one after the last epoch, so the validation images "
                "played no part in choosing it.")
    return (f"**{OPTIMISTIC_LABEL.capitalize()}:** fold scores are measured at the epoch chosen on those same "
            "validation images, so they, and every number made from them, lean optimistic; --select-on inner "
            "(the default) chooses on images that are not scored.")


def test_metrics_of(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The held-out test metrics of ``summary['test']`` (flat, or nested under ``metrics``), if any."""
    test = summary.get("test")
    if not isinstance(test, dict):
        return None
    return test["metrics"] if isinstance(test.get("metrics"), dict) else test


def summary_table(summary: Mapping[str, Any]) -> Table:
    """Each scalar metric: mean ± std over folds, each fold, the pooled predictions and the test set.

    The pooled and test columns are each followed by their 95% CI when the summary holds them.
    """
    folds = summary["folds"]
    header = ["metric", "mean ± std"] + [f"fold {f['fold']}" for f in folds]
    columns: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = []
    for name, metrics, intervals in ((pooled_name(summary), summary["oof"], summary.get("oof_ci")),
                                     (TEST_COLUMN, test_metrics_of(summary), summary.get("test_ci"))):
        if metrics is None:
            continue
        columns.append((metrics, intervals))
        header += [name] + ([f"{name} {CI_COLUMN}"] if intervals else [])
    rows = []
    # A summary without fold means (none were computed) still lists the pooled scalars.
    for key in summary["mean"] or scalar_metrics(summary["oof"]):
        label = label_of(key) + (" (monitored)" if key == summary.get("monitor") else "")
        row = [label, format_mean_std(summary["mean"].get(key), summary["std"].get(key))]
        row += [format_number(f["metrics"].get(key)) for f in folds]
        for metrics, intervals in columns:
            row += [format_number(metrics.get(key))] + ([format_interval(intervals.get(key))] if intervals else [])
        rows.append(row)
    return Table.labelled(header, rows)


def per_class_table(metrics: Mapping[str, Any], class_names: Sequence[str],
                    intervals: Sequence[Mapping[str, Any]] | None = None) -> Table:
    """Precision, sensitivity (recall), specificity, F1 and support of each class (one-vs-rest).

    ``intervals`` (one ``{"sensitivity": [low, high], "specificity": [...]}`` per class) adds their CIs.
    """
    header = ["class", "precision", "sensitivity (recall)"] + ([CI_COLUMN] if intervals else [])
    header += ["specificity"] + ([CI_COLUMN] if intervals else []) + ["F1", "support"]
    rows = []
    for k, (name, c) in enumerate(zip(class_names, metrics["per_class"])):
        row = [name, format_number(c["precision"]), format_number(c["recall"])]
        row += [format_interval(intervals[k]["sensitivity"])] if intervals else []
        row += [format_number(c.get("specificity"))]  # runs made before issue 12 lack it
        row += [format_interval(intervals[k]["specificity"])] if intervals else []
        rows.append(row + [format_number(c["f1"]), str(c["support"])])
    return Table.labelled(header, rows)


def interval_note(summary: Mapping[str, Any]) -> str | None:
    """How the CIs were made (a sentence), or None when the run has none."""
    settings = summary.get("ci_settings")
    if not settings:
        return None
    note = (f"95% CIs: {settings['method']} bootstrap, {settings['n_resamples']} resamples of "
            f"{settings['resampled_unit']}s, seed {settings['seed']}")
    if settings.get("percentile_fallback"):
        note += f" (percentile interval for {', '.join(settings['percentile_fallback'])}: BCa undefined)"
    return note + "."


def operating_point_note(summary: Mapping[str, Any]) -> str | None:
    """The two-class threshold chosen on the pooled predictions, and the test set's numbers there."""
    point = summary.get("operating_point")
    if not point:
        return None
    note = (f"Operating point for '{point['positive_class']}' ({point['rule']}): probability >= "
            f"{point['threshold']:.4f}, sensitivity {format_number(point['sensitivity'])}, specificity "
            f"{format_number(point['specificity'])}")
    test = summary.get("test_operating_point")
    if test:
        note += (f"; on the held-out test set at that threshold: sensitivity {format_number(test['sensitivity'])}, "
                 f"specificity {format_number(test['specificity'])}")
    return note + "."


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """The summary table as plain columns for the console and the log, with the best epochs."""
    folds = summary["folds"]
    notes = [note for note in (interval_note(summary), operating_point_note(summary)) if note]
    selection = selection_of(summary)
    chosen = (f"chosen on {summary['monitor']} of the {SELECTION_SETS[selection['on']]}" if selection["on"] != "last"
              else "the last epochs: nothing chosen")
    return "\n".join([render_text(summary_table(summary)), *notes,
                      *([OPTIMISTIC_LABEL.capitalize() + "."] if selection["optimistic"] else []),
                      f"best epochs: {', '.join(str(f['best_epoch']) for f in folds)}  "
                      f"({chosen}); wall time {summary['wall_time_s']:.0f}s"])
