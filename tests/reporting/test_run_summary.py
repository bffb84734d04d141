"""cv_summary.json's schema: what the trainer writes is read back whole, and anything else is named."""
from __future__ import annotations

import json
import math
import re

import pytest

from reporting.run_summary import SUMMARY_VERSION, RunSummary, Selection, SummaryError


def document(**changes):
    folds = [{"fold": 2, "best_epoch": 3, "metrics": {"accuracy": 0.5, "auc": None}},
             {"fold": 1, "best_epoch": 0, "metrics": {"accuracy": 0.75, "auc": 0.8}}]
    data = {"version": SUMMARY_VERSION, "mode": "cv", "n_splits": 2, "monitor": "balanced_accuracy",
            "selection": {"on": "inner", "inner_val_fraction": 0.15, "optimistic": False},
            "image_encoder": "resnet18", "text_encoder": "bert-base-chinese", "class_names": ["股骨柄A", "股骨柄B"],
            "folds": folds, "mean": {"accuracy": 0.625}, "std": {"accuracy": 0.125}, "oof": {"accuracy": 0.6},
            "environment": {"torch": "2.14.1"}, "wall_time_s": 12.5,
            "oof_ci": {"accuracy": [0.4, 0.8]}, "test": {"accuracy": 0.7}}
    return {**data, **changes}


def test_a_written_summary_reads_back_as_written_with_its_sections():
    summary = RunSummary.from_document(document(), "cv_summary.json")
    assert json.dumps(summary.to_document()) == json.dumps(document())  # the same keys in the same order
    assert summary.sections == {"oof_ci": {"accuracy": [0.4, 0.8]}, "test": {"accuracy": 0.7}}
    assert summary.class_names == ["股骨柄A", "股骨柄B"] and summary.is_cross_validation
    accuracy, auc = summary.metric_by_fold("accuracy"), summary.metric_by_fold("auc")
    assert accuracy == [0.75, 0.5] and auc[0] == 0.8 and math.isnan(auc[1])  # in fold order; null is NaN


def test_the_selection_is_typed_and_a_section_the_run_lacks_is_none():
    summary = RunSummary.from_document(document(), "cv_summary.json")
    assert summary.selection == Selection(on="inner", inner_val_fraction=0.15, optimistic=False)
    assert summary.section("oof_ci") == {"accuracy": [0.4, 0.8]} and summary.section("test") == {"accuracy": 0.7}
    assert summary.section("operating_point") is None
    last = RunSummary.from_document(document(selection={"on": "last", "inner_val_fraction": None,
                                                        "optimistic": False}), "cv_summary.json")
    assert list(last.to_document()["selection"]) == ["on", "inner_val_fraction", "optimistic"]  # as written


@pytest.mark.parametrize("selection", [
    {"on": "best", "inner_val_fraction": None, "optimistic": False},
    {"on": "fold", "inner_val_fraction": None, "optimistic": "yes"},
    {"on": "inner", "inner_val_fraction": None, "optimistic": False},
    {"on": "last", "inner_val_fraction": 0.15, "optimistic": False},
    {"inner_val_fraction": None, "optimistic": True},
])
def test_a_selection_the_trainer_does_not_write_is_refused(selection):
    with pytest.raises(SummaryError, match="'selection' is not what chose the fold models"):
        RunSummary.from_document(document(selection=selection), "cv_summary.json")


@pytest.mark.parametrize("changes, message", [
    ({"folds": []}, "0 fold(s) for n_splits 2: not whole"),
    ({"class_names": "a,b"}, "'class_names' is not a list"),
    ({"version": 99}, "summary version 99; this train_clip reads version 1"),
    ({"folds": [{"fold": 1}, {"fold": 2}]}, "a fold entry lacks fold, best_epoch or metrics"),
])
def test_a_summary_that_is_not_whole_is_named_with_what_is_wrong(changes, message):
    with pytest.raises(SummaryError, match=re.escape(message)) as error:
        RunSummary.from_document(document(**changes), "runs/x/cv_summary.json")
    assert str(error.value).startswith("runs/x/cv_summary.json")


def test_a_missing_key_is_named():
    data = document()
    del data["mean"], data["oof"], data["selection"]
    with pytest.raises(SummaryError, match="lacks selection, mean, oof: not a whole train_clip run summary"):
        RunSummary.from_document(data, "cv_summary.json")
    with pytest.raises(SummaryError, match="a JSON object is expected"):
        RunSummary.from_document([document()], "cv_summary.json")
