"""The leaderboard of a study: one row per run folder, ranked on a cross-validated metric.

Reads each run's ``cv_summary.json`` and ``folds.json`` (docs/design.md §6) and writes
``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.zh.md`` (the same page in Chinese, from the
phrases of :mod:`reporting.phrases`; ``--report-lang``) into the study's output root. Each run is compared
with the top one: the mean per-fold difference of the ranked metric and the p-value of the
corrected resampled t-test (:mod:`reporting.compare`), only when both used the same folds;
otherwise the row says why not. The best run of the runs sharing its folds gets its score corrected
for having been chosen among them (BBC-CV, :mod:`reporting.selection_bias`) and, with a held-out
test set, its test score. The study runner calls it at the end; it also runs on its own::

    python -m reporting.leaderboard checkpoints/clip_models               # every run folder there
    python -m reporting.leaderboard checkpoints/clip_models resnet18_clip_ViT-B_32 --metric roc_auc
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from reporting import metric_table
from reporting.fold_comparison import TTest, paired_fold_test
from reporting.metric_table import Metric
from reporting.phrases import ENGLISH, REPORT_LANGS, Phrases, report_languages
from reporting.run_entries import LEADERBOARD_METRICS, Entry, LeaderboardError, find_runs, read_entry
from reporting.study_winner import DEFAULT_BBC_RESAMPLES, DEFAULT_BBC_SEED, Winner, find_winners
from reporting.tables import Table, format_interval, format_mean_std, format_number, render_markdown
from utils.errors import exit_status
from utils.io import atomic_write, write_csv
from utils.progress import format_duration

log = logging.getLogger("train_clip.leaderboard")

DEFAULT_METRIC = "balanced_accuracy"
CSV_FILE = "leaderboard.csv"
MARKDOWN_FILES = {"en": "leaderboard.md", "zh": "leaderboard.zh.md"}
MARKDOWN_FILE = MARKDOWN_FILES["en"]
OPTIMISTIC_NOTE = ENGLISH("optimistic_label")


def ranked_metric(name: str) -> Metric:
    """The table's row for a metric the leaderboard can rank on (every finished run has it)."""
    return metric_table.metric(name, "leaderboard metric", LEADERBOARD_METRICS)


def rank(entries: Sequence[Entry], metric: str) -> list[Entry]:
    """Best mean first; runs whose metric is NaN go last; ties keep name order."""
    sign = -1.0 if ranked_metric(metric).higher_is_better else 1.0

    def order(entry: Entry) -> tuple[bool, float, str]:
        value = entry.mean[metric]
        return math.isnan(value), 0.0 if math.isnan(value) else sign * value, entry.run

    return sorted(entries, key=order)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def against_top(ranked: Sequence[Entry], metric: str) -> list[TTest | str | None]:
    """Each run against the first on ``metric``: the corrected t-test, why it is not done, or None (the top)."""
    if not ranked:
        return []
    top = ranked[0]
    return [None] + [paired_fold_test(e.per_fold[metric], top.per_fold[metric], e.folds, top.folds)
                     for e in ranked[1:]]


def comparison_cells(result: TTest | str | None, t: Phrases = ENGLISH) -> list[str]:
    """The mean per-fold difference and the p-value cells; the reason when the runs were not compared."""
    if result is None:
        return ["—", "—"]
    if isinstance(result, str):
        return ["n/a", t("lb_not_compared", reason=result)]
    return [f"{result.mean_difference:+.4f}", format_number(result.p_value)]


def bbc_cell(winner: Winner | None, t: Phrases = ENGLISH) -> str:
    """``estimate [low, high] of N runs`` for a winner; — for a run that won nothing; n/a when not computed."""
    if winner is None:
        return "—"
    if winner.bbc is None:
        return "n/a"
    return (f"{format_number(winner.bbc.estimate)} {format_interval([winner.bbc.low, winner.bbc.high])} "
            + t("lb_of_runs_plural" if winner.bbc.n_runs != 1 else "lb_of_runs", n=winner.bbc.n_runs))


def leaderboard_table(ranked: Sequence[Entry], metric: str, winners: Sequence[Winner] = (),
                      t: Phrases = ENGLISH) -> Table:
    """Rank, run, encoders, mean ± std of each metric (▼ marks the one ranked on), folds, wall time,
    the comparison with the first run, the winners' BBC-CV, and (when a run has one) a note."""
    columns = [ranked_metric(m) for m in LEADERBOARD_METRICS]
    won = {w.run: w for w in winners}
    notes = [t("optimistic_label") if e.optimistic else "" for e in ranked]
    tuned = any(e.fine_tuning for e in ranked)  # the column only when some run used a fine-tuning method
    header = [t("lb_rank"), t("lb_run"), t("lb_image"), t("lb_text")] + ([t("lb_fine_tuning")] if tuned else [])
    header += [m.short_label_in(t.lang) + (" ▼" if m.name == metric else "") for m in columns]
    header += [t("lb_folds"), t("lb_wall"), t("lb_delta"), t("lb_p"), t("lb_bbc")] + ([t("lb_note")] if any(notes) else [])
    rows = [[str(i), e.run, e.image_encoder, e.text_encoder] + ([e.fine_tuning or t("lb_plain")] if tuned else [])
            + [format_mean_std(e.mean[m.name], e.std[m.name]) for m in columns]
            + [str(e.n_splits), format_duration(e.wall_time_s)] + comparison_cells(result, t) + [bbc_cell(won.get(e.run), t)]
            + ([note] if any(notes) else [])
            for i, (e, result, note) in enumerate(zip(ranked, against_top(ranked, metric), notes), 1)]
    right = [True, False, False, False] + ([False] if tuned else []) + [True] * len(columns) + [True, True, True, False, False]
    return Table(header, rows, right + ([False] if any(notes) else []))


def winner_lines(winner: Winner, by_run: dict[str, Entry], metric: str, t: Phrases = ENGLISH) -> list[str]:
    """What the winner's row means: its raw CV, the corrected estimate, its test score; what was left out."""
    entry = by_run[winner.run]
    label = ranked_metric(metric).label_in(t.lang)
    raw = t("lb_raw", label=label, value=format_mean_std(entry.mean[metric], entry.std[metric]))
    if len(winner.chosen_from) > 1:
        lines = [t("lb_best_of", run=winner.run, n=len(winner.chosen_from), raw=raw)]
    else:
        lines = [t("lb_only", run=winner.run, raw=raw)]
    if winner.bbc is not None:
        unit = t("unit_group" if winner.bbc.resampled_unit == "group" else "unit_image")
        lines.append(t("lb_bbc_line", corrected=t("lb_corrected") if winner.bbc.n_runs > 1 else "",
                       estimate=format_number(winner.bbc.estimate),
                       interval=format_interval([winner.bbc.low, winner.bbc.high]), n=winner.bbc.n_resamples,
                       unit=unit, seed=winner.bbc.seed))
    if winner.test_score is not None:
        lines.append(t("lb_test", label=label, value=format_number(winner.test_score), run=winner.run))
    elif winner.bbc is not None:
        lines.append(t("lb_no_test"))
    if entry.optimistic:
        lines.append(t("lb_winner_optimistic", label=t("optimistic_label")))
    return [("" if t.lang == "zh" else " ").join(lines)] + [f"  - {note}" for note in winner.notes]


def format_leaderboard(ranked: Sequence[Entry], metric: str, without_results: Sequence[str] = (),
                       winners: Sequence[Winner] = (), ungrouped: Sequence[str] = (), t: Phrases = ENGLISH) -> str:
    """The leaderboard as Markdown: ranked runs, each fold set's winner corrected for the choice,
    then the runs that have no results (yet)."""
    parts = [t("lb_intro", metric=metric), "",
             render_markdown(leaderboard_table(ranked, metric, winners, t)) if ranked else t("lb_none"), "",
             t("lb_explained", metric=metric)]
    by_run = {e.run: e for e in ranked}
    for winner in winners:
        parts += [""] + winner_lines(winner, by_run, metric, t)
    if ungrouped:
        parts += ["", t("lb_left_out"), ""] + [f"- {note}" for note in ungrouped]
    if without_results:
        parts += ["", t("lb_without"), ""]
        parts += [f"- {run}" for run in without_results]
    return "\n".join(parts) + "\n"


def csv_rows(ranked: Sequence[Entry], metric: str,
             winners: Sequence[Winner] = ()) -> tuple[list[str], list[list[Any]]]:
    won = {w.run: w for w in winners}

    def winner_cells(winner: Winner | None) -> list[Any]:
        if winner is None:
            return ["", "", "", "", ""]
        bbc = winner.bbc
        test = "" if winner.test_score is None else winner.test_score
        return ([bbc.estimate, bbc.low, bbc.high, bbc.n_runs] if bbc else ["", "", "", ""]) + [test]

    header = ["rank", "run", "image_encoder", "text_encoder", "fine_tuning", "n_splits"]
    header += [f"{m}_{part}" for m in LEADERBOARD_METRICS for part in ("mean", "std")] + ["wall_time_s"]
    header += ["difference_vs_top", "p_value_vs_top", "not_compared_because"]
    header += ["bbc_estimate", "bbc_ci_low", "bbc_ci_high", "bbc_chosen_from", f"test_{metric}", "optimistic"]
    rows = [[i, e.run, e.image_encoder, e.text_encoder, e.fine_tuning, e.n_splits]
            + [value for m in LEADERBOARD_METRICS for value in (e.mean[m], e.std[m])] + [e.wall_time_s]
            + ([result.mean_difference, result.p_value, ""] if isinstance(result, TTest)
               else ["", "", result or ""])
            + winner_cells(won.get(e.run)) + [str(e.optimistic).lower()]
            for i, (e, result) in enumerate(zip(ranked, against_top(ranked, metric)), 1)]
    return header, rows


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------
def build_leaderboard(root: Path, runs: Sequence[str] | None = None,
                      metric: str = DEFAULT_METRIC) -> tuple[list[Entry], list[str]]:
    """Ranked entries of ``runs`` (folder names under ``root``; default: every run folder there)
    and the names of those without a complete summary."""
    ranked_metric(metric)
    if not root.is_dir():
        raise LeaderboardError(f"output root not found: {root}")
    names = list(runs) if runs is not None else find_runs(root)
    entries, without_results = [], []
    for name in names:
        entry = read_entry(root / name)
        if entry is None:
            without_results.append(name)
        else:
            entries.append(entry)
    return rank(entries, metric), without_results


def write_leaderboard(root: Path, ranked: Sequence[Entry], metric: str, without_results: Sequence[str] = (),
                      bbc_resamples: int = DEFAULT_BBC_RESAMPLES, bbc_seed: int = DEFAULT_BBC_SEED,
                      report_lang: str = "both") -> str:
    """Write ``leaderboard.csv`` and the Markdown page in each language of ``report_lang`` (en, zh or both) into
    ``root``; returns the first page written (English unless zh alone)."""
    winners, ungrouped = find_winners(root, ranked, metric, bbc_resamples, bbc_seed)
    header, rows = csv_rows(ranked, metric, winners)
    write_csv(root / CSV_FILE, header, rows)
    pages = []
    for lang in report_languages(report_lang):
        pages.append(format_leaderboard(ranked, metric, without_results, winners, ungrouped, Phrases(lang)))
        with atomic_write(root / MARKDOWN_FILES[lang], "w") as handle:
            handle.write(pages[-1])
    return pages[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reporting.leaderboard",
        description="Rank the runs of a study by their cross-validated metrics and write "
                    f"{CSV_FILE} and {MARKDOWN_FILE} (and its Chinese {MARKDOWN_FILES['zh']}) into OUTPUT_ROOT.")
    parser.add_argument("output_root", metavar="OUTPUT_ROOT", help="Folder holding one folder per run.")
    parser.add_argument("runs", metavar="RUN", nargs="*",
                        help="Run folder names under OUTPUT_ROOT (default: every run folder there).")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"Metric to rank on: {', '.join(LEADERBOARD_METRICS)} "
                             f"(default: {DEFAULT_METRIC}).")
    parser.add_argument("--bbc-resamples", type=int, default=DEFAULT_BBC_RESAMPLES,
                        help="Bootstrap resamples of BBC-CV, the winner's score corrected for choosing it "
                             f"(default: {DEFAULT_BBC_RESAMPLES}; 0: off).")
    parser.add_argument("--bbc-seed", type=int, default=DEFAULT_BBC_SEED,
                        help=f"Seed of those resamples (default: {DEFAULT_BBC_SEED}).")
    parser.add_argument("--report-lang", choices=REPORT_LANGS, default="both",
                        help=f"Language of the Markdown page: en ({MARKDOWN_FILE}), zh ({MARKDOWN_FILES['zh']}) or "
                             "both (default: both).")
    args = parser.parse_args(argv)
    if args.bbc_resamples < 0:
        parser.error(f"--bbc-resamples must be 0 or more, got {args.bbc_resamples}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.output_root)

    def leaderboard_text() -> str:
        ranked, without_results = build_leaderboard(root, args.runs or None, args.metric)
        return write_leaderboard(root, ranked, args.metric, without_results, args.bbc_resamples, args.bbc_seed,
                                 args.report_lang)

    return exit_status(leaderboard_text)


if __name__ == "__main__":
    sys.exit(main())
