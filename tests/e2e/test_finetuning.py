"""The fine-tuning methods in whole runs: recorded in config.json, cv_summary.json and report.md's
methods paragraph, and an interrupted run resumed gives exactly the uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_clip
import training.fold
from tests.helpers import make_image_tree

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# Each method: its flags, the leaderboard label and a phrase of the methods paragraph.
METHODS = {
    "accum": (["--accum-steps", "2"], "accum ×2", "micro-batches whose gradients were accumulated"),
}


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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_method_is_recorded_and_resumes_exactly(method, data, tiny_text_encoder, tmp_path, monkeypatch):
    flags, label, phrase = METHODS[method]
    full = tmp_path / "full"
    assert train_clip.main(base_args(data, tiny_text_encoder, full) + flags) == 0
    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after_fold_1_epoch_1(patch)
        assert train_clip.main(base_args(data, tiny_text_encoder, interrupted) + flags) == 130
    assert train_clip.main(base_args(data, tiny_text_encoder, interrupted) + flags + ["--resume"]) == 0
    # One process, one thread, the same kernels: the resumed run is the uninterrupted one bit for bit.
    assert histories(interrupted) == histories(full)
    config = json.loads((full / "config.json").read_text())
    assert [config[key.lstrip("-").replace("-", "_")] for key in flags[::2]] == [
        type(config[key.lstrip("-").replace("-", "_")])(value) for key, value in zip(flags[::2], flags[1::2])]
    assert json.loads((full / "cv_summary.json").read_text())["fine_tuning"] == label
    assert phrase in (full / "report.md").read_text()
