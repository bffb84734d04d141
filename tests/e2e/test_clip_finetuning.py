"""Fine-tuning methods on a tiny open_clip pair (a pretrained zero-shot start): --wise-alpha 0 is
exactly the zero-shot model, 1 the fine-tuned one, and the checkpoint holds the interpolated weights;
--lp-epochs' first phase moves the CLIP's own projections and scale only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_clip
from models.clip_model import build_clip_model
from tests.clip_helpers import TINY_CLIP_NAME, cache_tiny_open_clip
from tests.weights_helpers import point_caches_at
from tests.e2e.test_finetuning import interrupt_after_fold_1_epoch_1
from training.checkpoints import full_model_state, load_best_model_state
from utils.io import load_checkpoint
from utils.run_dir import RunDir

pytestmark = [pytest.mark.slow]
TEMPLATE = "a photo of {class_name}"
SCORES = ("val_loss", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece")  # of the scored images


def train(root: Path, data: Path, name: str, *flags: str, code: int = 0) -> Path:
    out = root / name
    assert train_clip.main(["--data-dir", str(data), "--image-encoder", TINY_CLIP_NAME, "--text-encoder",
                            TINY_CLIP_NAME, "--text-template", TEMPLATE, "--img-size", "32", "--epochs", "2",
                            "--batch-size", "4", "--learning-rate", "1e-3", "--warmup-epochs", "0",
                            "--augmentation", "none", "--num-workers", "0", "--select-on", "last",
                            "--bootstrap-resamples", "0", "--output-dir", str(out),
                            "--log-file", str(root / f"{name}.log"), *flags]) == code
    return out


def scores(run: Path) -> list[dict]:
    return [{key: row[key] for key in SCORES} for row in json.loads((run / "fold_1" / "history.json").read_text())]


@pytest.fixture
def tiny_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, hub_cache = point_caches_at(monkeypatch, tmp_path / "caches")
    cache_tiny_open_clip(hub_cache, tmp_path / "tiny_clip_repo")


def zero_shot_state(run: Path) -> dict[str, torch.Tensor]:
    """The untrained pair with the run's class texts (its classes: the data folder's, sorted)."""
    data = Path(json.loads((run / "config.json").read_text())["data_dir"])
    texts = [[TEMPLATE.format(class_name=folder.name)] for folder in sorted(data.iterdir())]
    return build_clip_model(TINY_CLIP_NAME, TINY_CLIP_NAME, 512, 0.07, texts, img_size=32).state_dict()


@pytest.mark.usefixtures("tiny_clip")
def test_wise_ft_ends_are_the_zero_shot_and_the_fine_tuned_models(tmp_path, image_tree):
    tuned = train(tmp_path, image_tree, "alpha_1")  # the default: the fine-tuned model itself
    zero = train(tmp_path, image_tree, "alpha_0", "--wise-alpha", "0")
    half = train(tmp_path, image_tree, "alpha_half", "--wise-alpha", "0.5")

    # alpha 0: every epoch scores exactly as epoch 0, the zero-shot model, and that model is saved.
    assert scores(zero) == [scores(tuned)[0]] * 3
    assert scores(tuned)[2] != scores(tuned)[0]  # training did move the fine-tuned model
    zero_shot = zero_shot_state(tuned)
    saved = {run: load_best_model_state(RunDir(run), 1) for run in (tuned, zero, half)}
    assert all(torch.equal(saved[zero][key], value) for key, value in zero_shot.items())
    # The interpolated run trained exactly as the fine-tuned one (WiSE-FT changes only what is saved):
    # its checkpoint is torch.lerp of the two ends, bit for bit.
    for key, value in saved[tuned].items():
        expected = torch.lerp(zero_shot[key], value, 0.5) if value.is_floating_point() else value
        assert torch.equal(saved[half][key], expected), key
    assert scores(half)[2] not in (scores(tuned)[2], scores(zero)[2])
    config = json.loads((half / "config.json").read_text())
    assert config["wise_alpha"] == 0.5
    assert json.loads((half / "cv_summary.json").read_text())["fine_tuning"] == "WiSE-FT α=0.5"
    assert "interpolated" in (half / "report.md").read_text()


def test_wise_ft_without_a_zero_shot_start_is_refused_in_one_line(tmp_path, capsys):
    code = train_clip.main(["--data-dir", str(tmp_path), "--image-encoder", "resnet18", "--wise-alpha", "0.5"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--wise-alpha needs a pretrained zero-shot start" in error


@pytest.mark.usefixtures("tiny_clip")
def test_lp_ft_first_phase_moves_only_the_clip_projections_and_scale(tmp_path, image_tree, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_after_fold_1_epoch_1(patch)
        run = train(tmp_path, image_tree, "lp", "--lp-epochs", "1", code=130)
    path = RunDir(run).latest_checkpoint(1)
    after_phase = full_model_state(load_checkpoint(path), path)
    zero_shot = zero_shot_state(run)
    changed = sorted(key for key, value in zero_shot.items() if not torch.equal(after_phase[key], value))
    assert changed == ["image_encoder.backbone.tower.proj", "logit_scale", "text_encoder.clip.text_projection"]
    train(tmp_path, image_tree, "lp", "--lp-epochs", "1", "--resume")  # the second phase: the towers train
    final = load_best_model_state(RunDir(run), 1)
    assert not torch.equal(final["image_encoder.backbone.tower.conv1.weight"],
                           zero_shot["image_encoder.backbone.tower.conv1.weight"])
