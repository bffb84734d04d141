"""--augment-on device in a whole run (on the CPU here, the same code as on a GPU): the loader delivers
the cached uint8 images, whole batches are augmented in the training process, the run trains, and an
interrupted run resumed gives the uninterrupted one exactly."""
from __future__ import annotations

import math
from pathlib import Path

import torch

import train_clip
from data.batch_transforms import BatchAugmentation
from tests.e2e.test_finetuning import histories, interrupt_after_fold_1_epoch_1
from tests.helpers import make_image_tree



def run_args(data: Path, text_encoder: Path, out: Path) -> list[str]:
    return ["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "starnet_s050",
            "--img-size", "32", "--epochs", "2", "--batch-size", "4", "--num-workers", "0",
            "--learning-rate", "1e-3", "--augmentation", "standard", "--augment-on", "device",
            "--bootstrap-resamples", "0", "--output-dir", str(out), "--log-file", str(out.parent / f"{out.name}.log")]


def test_batches_augmented_on_the_device_train_and_resume_exactly(tmp_path, tiny_text_encoder, monkeypatch):
    data = make_image_tree(tmp_path / "data", {"a": 8, "b": 8})
    batches = []
    real_call = BatchAugmentation.__call__

    def record(self, images):
        batches.append((images.dtype, tuple(images.shape)))
        return real_call(self, images)

    full = tmp_path / "full"
    with monkeypatch.context() as patch:
        patch.setattr(BatchAugmentation, "__call__", record)
        assert train_clip.main(run_args(data, tiny_text_encoder, full)) == 0
    # The loader only indexed the cache: uint8 grayscale batches of --batch-size, augmented in the trainer.
    assert batches and set(batches) == {(torch.uint8, (4, 1, 32, 32))}
    rows = histories(full)[0]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in rows[1:])

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after_fold_1_epoch_1(patch)
        assert train_clip.main(run_args(data, tiny_text_encoder, interrupted)) == 130
    assert train_clip.main(run_args(data, tiny_text_encoder, interrupted) + ["--resume"]) == 0
    # One process, one thread, the same kernels: epoch 2 draws the same augmentations after the resume.
    assert histories(interrupted) == histories(full)
