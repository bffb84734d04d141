"""The fine-tuning methods in whole runs: recorded in config.json, cv_summary.json and report.md's
methods paragraph, and an interrupted run resumed gives exactly the uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_clip
import training.fold
from tests.helpers import make_image_tree

pytestmark = [pytest.mark.slow]

# The methods that go together on a tiny BERT and StarNet, in one run: each one's flags, its label in
# the leaderboard and a phrase of the methods paragraph (WiSE-FT needs CLIP towers: tests/e2e/test_wise_ft.py).
METHODS = {
    "accum": (["--accum-steps", "2"], "accum ×2", "micro-batches whose gradients were accumulated"),
    "ema": (["--ema-decay", "0.9"], "EMA 0.9", "exponential moving average of the weights (decay 0.9"),
    "lp": (["--lp-epochs", "1"], "LP-FT 1 ep", "for the first 1 epoch(s) only the projections"),
    "layer_decay": (["--layer-decay", "0.8"], "layer decay 0.8", "decayed layer-wise by 0.8 per layer group"),
    "unlocked": (["--unlocked-groups", "3"], "last 3 groups", "Only the last 3 layer group(s) of the image"),
}
FLAGS = [flag for flags, _, _ in METHODS.values() for flag in flags]


def base_args(data: Path, text_encoder: Path, out: Path) -> list[str]:
    return ["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "starnet_s050",
            "--img-size", "32", "--epochs", "2", "--batch-size", "4", "--num-workers", "0",
            "--learning-rate", "1e-3", "--augmentation", "minimal", "--bootstrap-resamples", "0",
            "--output-dir", str(out), "--log-file", str(out.parent / f"{out.name}.log")]


def histories(run_dir: Path) -> list[list[dict]]:
    bookkeeping = ("seconds", "train_seconds", "text_encoder_calls")  # of the process, not results
    return [[{k: v for k, v in row.items() if k not in bookkeeping}
             for row in json.loads((run_dir / f"fold_{fold}" / "history.json").read_text())] for fold in (1,)]


def interrupt_after_fold_1_epoch_1(monkeypatch: pytest.MonkeyPatch) -> None:
    real = training.fold.record_epoch

    def record_then_stop(run, fold, state, epoch, *args, **kwargs):
        real(run, fold, state, epoch, *args, **kwargs)
        if fold.number == 1 and epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.fold, "record_epoch", record_then_stop)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("finetune_data"), {"a": 8, "b": 8, "c": 8})


def test_the_methods_are_recorded_and_resume_exactly(data, tiny_text_encoder, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert train_clip.main(base_args(data, tiny_text_encoder, full) + FLAGS) == 0
    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after_fold_1_epoch_1(patch)
        assert train_clip.main(base_args(data, tiny_text_encoder, interrupted) + FLAGS) == 130
    assert train_clip.main(base_args(data, tiny_text_encoder, interrupted) + FLAGS + ["--resume"]) == 0
    # One process, one thread, the same kernels: the resumed run is the uninterrupted one bit for bit.
    assert histories(interrupted) == histories(full)
    config = json.loads((full / "config.json").read_text())
    for flag, value in zip(FLAGS[::2], FLAGS[1::2]):
        key = flag[2:].replace("-", "_")
        assert config[key] == type(config[key])(value), key
    assert json.loads((full / "cv_summary.json").read_text())["fine_tuning"] == ", ".join(
        label for _, label, _ in METHODS.values())
    report = (full / "report.md").read_text()
    assert all(phrase in report for _, _, phrase in METHODS.values())
