"""The fine-tuning methods in words: the leaderboard's label and column, the methods sentences."""
from __future__ import annotations

from reporting.finetuning import finetuning_label, finetuning_sentences
from reporting.leaderboard import csv_rows, leaderboard_table
from reporting.run_entries import LEADERBOARD_METRICS, Entry
from training.config import TrainConfig


def entry(run: str, fine_tuning: str) -> Entry:
    values = {metric: 0.5 for metric in LEADERBOARD_METRICS}
    folds = {metric: [0.5] * 5 for metric in LEADERBOARD_METRICS}
    return Entry(run, "resnet18", "clip:ViT-B/32", 5, values, values, 60.0, folds, fine_tuning=fine_tuning)


def test_the_label_and_sentences_name_exactly_the_methods_used():
    plain = TrainConfig(data_dir="x").to_dict()
    assert finetuning_label(plain) == "" and finetuning_sentences(plain) == []
    tuned = TrainConfig(data_dir="x", accum_steps=4, wise_alpha=0.5, unlocked_groups=2).to_dict()
    assert finetuning_label(tuned) == "accum ×4, WiSE-FT α=0.5, last 2 groups"
    sentences = finetuning_sentences(tuned)
    assert len(sentences) == 3 and "4 micro-batches" in sentences[0] and "(1 − 0.5)" in sentences[1]
    assert finetuning_label({}) == ""  # a config.json of a run older than the methods


def test_the_leaderboard_shows_the_column_only_when_a_run_used_a_method():
    plain_only = leaderboard_table([entry("a", ""), entry("b", "")], "balanced_accuracy")
    assert "fine-tuning" not in plain_only.header
    table = leaderboard_table([entry("a", "EMA 0.999"), entry("b", "")], "balanced_accuracy")
    column = table.header.index("fine-tuning")
    assert [row[column] for row in table.rows] == ["EMA 0.999", "plain"]
    assert len(table.right) == len(table.header)
    header, rows = csv_rows([entry("a", "EMA 0.999")], "balanced_accuracy")
    assert rows[0][header.index("fine_tuning")] == "EMA 0.999"
