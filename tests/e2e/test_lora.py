"""--lora-rank in a whole run on the tiny open_clip pair (with --ema-decay and --lp-epochs, which combine
with it, and a held-out test set): the checkpoints hold only the adapters and the head, an interrupted run
resumes exactly, the run records the rank, predict.py and the export run the merged model and give the
run's own probabilities, and a checkpoint refuses base weights that are not its own."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from data.images import decode_image
from data.transforms import ToModelInput
from export import __main__ as export_cli
from tests.clip_helpers import TINY_CLIP_NAME
from tests.e2e.test_clip_finetuning import scores, tiny_clip, train  # noqa: F401 (tiny_clip: a fixture)
from tests.e2e.test_finetuning import interrupt_after_fold_1_epoch_1
from tests.equivalence import PROBABILITY_TOLERANCE
from tests.models.test_clip_towers import assert_predict_reproduces_fold_one
from training.checkpoints import load_best_model_state
from training.ensemble import load_fold_model
from training.finetune import HEAD
from training.lora import has_adapters, is_adapter
from utils.checksums import load_recorded, save_recorded
from utils.io import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from utils.run_dir import RunDir

pytestmark = [pytest.mark.slow]
# LP-FT's first epoch trains the head alone: the run is interrupted there, the adapters train after resuming.
LORA = ("--lora-rank", "4", "--ema-decay", "0.5", "--lp-epochs", "1", "--test-fraction", "0.2")


def fold_1_logged(run: Path) -> dict[str, list[float]]:
    """oof_predictions.csv's probabilities of fold 1's validation images (the adapted model's)."""
    with (run / "oof_predictions.csv").open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["fold"] == "1"]
    return {row["path"]: [float(row[k]) for k in row if k.startswith("prob_")] for row in rows}


@pytest.mark.usefixtures("tiny_clip")
def test_a_lora_run_keeps_only_adapters_resumes_exactly_and_predicts_with_the_merged_model(
        tmp_path, image_tree, monkeypatch):
    full = train(tmp_path, image_tree, "full", *LORA)
    with monkeypatch.context() as patch:
        interrupt_after_fold_1_epoch_1(patch)
        train(tmp_path, image_tree, "interrupted", *LORA, code=130)
    resumed = train(tmp_path, image_tree, "interrupted", *LORA, "--resume")
    assert scores(resumed) == scores(full) and scores(full)[-1] != scores(full)[0]  # it trained, and resumed exactly
    ours, theirs = load_best_model_state(RunDir(full), 1), load_best_model_state(RunDir(resumed), 1)
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)

    saved = load_checkpoint(full / "fold_1" / "checkpoint_best.pth")
    assert saved["model"] and all(is_adapter(key) or HEAD.match(key) for key in saved["model"])
    assert all(saved["model"][key].any() for key in saved["model"] if "lora_B" in key)  # the adapters trained
    assert saved["lora"]["rank"] == 4 and TINY_CLIP_NAME in saved["lora"]["base"]
    assert json.loads((full / "config.json").read_text())["lora_rank"] == 4
    assert json.loads((full / "test_metrics.json").read_text())["n_images"] == 5  # the test ensemble ran
    assert json.loads((full / "cv_summary.json").read_text())["fine_tuning"] == "EMA 0.5, LP-FT 1 ep, LoRA r=4"
    assert "fine-tuned with LoRA (Hu et al. 2022, the peft library) of rank 4" in (full / "report.md").read_text()

    merged, _ = load_fold_model(1, full / "fold_1" / "checkpoint_best.pth", torch.device("cpu"))
    assert not has_adapters(merged.model)  # predict.py, the gallery and the export: the plain merged model
    assert_predict_reproduces_fold_one(full, image_tree, tmp_path)

    bundle = tmp_path / "bundle"
    assert export_cli.main([str(full), "--output", str(bundle), "--fold", "1", "--format", "onnx"]) == 0
    logged = fold_1_logged(full)
    to_input = ToModelInput()
    inputs = torch.stack([to_input(decode_image(image_tree / name, 32)) for name in logged])
    session = onnxruntime.InferenceSession(str(bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": inputs.numpy()})[0], list(logged.values()),
                               rtol=0, atol=PROBABILITY_TOLERANCE)

    # Other base weights behind the adapters: the run file changed and the checkpoint's reference to it
    # made to agree, so that only the record of the base itself (training.lora.check_base) can tell.
    frozen = full / "frozen_towers.pth"
    base = load_checkpoint(frozen)
    key = next(key for key in base["model"] if key.endswith("ln_final.weight"))
    base["model"][key] += 1e-3
    save_checkpoint(frozen, base)
    best = full / "fold_1" / "checkpoint_best.pth"
    checkpoint = load_recorded(best)
    save_recorded(best, {**checkpoint, "shared_weights": {**checkpoint["shared_weights"], "sha256": file_sha256(frozen)}})
    with pytest.raises(CheckpointError, match="its LoRA adapters were trained on other base weights"):
        load_fold_model(1, best, torch.device("cpu"))
