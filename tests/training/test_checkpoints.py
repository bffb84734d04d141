"""Checkpoints a study can afford (issue 14): frozen towers stored once per run, latest hard-linked to
best when the last epoch is the best, --checkpoint-dtype; resume and predict.py unchanged."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
import train_clip
import training.checkpoint_format
import training.checkpoints
import training.fold
from tests.equivalence import PROBABILITY_TOLERANCE
from tests.helpers import make_image_tree
from training.checkpoint_format import CHECKPOINT_FORMAT, full_model_state
from training.checkpoints import TRAINING_STATE_KEYS, FoldCheckpoints, load_best_model_state
from utils.checksums import save_recorded
from utils.io import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from utils.run_dir import RunDir


FROZEN_FILE = "frozen_towers.pth"


def train(out: Path, data: Path, text_encoder: Path, *flags: str, epochs: int = 2) -> int:
    return train_clip.main(["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}",
                            "--image-encoder", "starnet_s050", "--img-size", "24", "--epochs", str(epochs),
                            "--batch-size", "4", "--learning-rate", "1e-3", "--warmup-epochs", "0",
                            "--augmentation", "none", "--num-workers", "0", "--use-cv", "--n-splits", "2",
                            "--output-dir", str(out), "--log-file", str(out.parent / f"{out.name}.log"), *flags])


@pytest.fixture(scope="module")
def frozen_text_run(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path) -> tuple[Path, Path]:
    """(data, run) of a 2-fold, 2-epoch run with a frozen text tower."""
    root = tmp_path_factory.mktemp("frozen_text")
    data = make_image_tree(root / "data", {"a": 6, "b": 6})
    out = root / "run"
    assert train(out, data, tiny_text_encoder, "--freeze-text") == 0
    return data, out


def checkpoints_of(run: Path) -> list[Path]:
    return sorted(run.glob("fold_*/checkpoint_*.pth"))


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def predict_probs(run: Path, images: Path, output: Path, *extra: str) -> dict[str, list[float]]:
    assert predict.main(["--run-dir", str(run), "--images", str(images), "--output", str(output), *extra]) == 0
    with output.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {row["path"]: [float(v) for k, v in row.items() if k.startswith("prob_")] for row in rows}


# ---------------------------------------------------------------------------------------------
# A frozen tower is stored once per run
# ---------------------------------------------------------------------------------------------
def test_frozen_text_tower_is_stored_once_and_every_checkpoint_names_its_hash(frozen_text_run):
    _, run = frozen_text_run
    shared_path = run / FROZEN_FILE
    shared = load_checkpoint(shared_path, ("model",))["model"]
    assert shared and all(key.startswith("text_encoder.") for key in shared)
    text_bytes = tensor_bytes(shared)
    digest = file_sha256(shared_path)
    paths = checkpoints_of(run)
    assert len(paths) == 4
    for path in paths:
        saved = load_checkpoint(path)
        assert saved["format"] == CHECKPOINT_FORMAT
        assert saved["shared_weights"] == {"file": FROZEN_FILE, "sha256": digest}
        assert not any(key.startswith("text_encoder.") for key in saved["model"])
        assert path.stat().st_size < text_bytes  # the text tower alone would not fit in it
        whole = full_model_state(saved, path)
        # The frozen tower is the untrained one, identical in every fold and epoch.
        assert all(torch.equal(whole[key], value) for key, value in shared.items())
        assert any(key.startswith("image_encoder.") for key in whole)


def test_frozen_towers_never_move_during_training_and_resume_is_exact(tmp_path, tiny_text_encoder, monkeypatch):
    """Both towers frozen (the image tower's BatchNorm buffers included): every checkpoint written
    during training omits them, the model's own copy equals the stored file at every save, and a run
    interrupted in fold 2 resumes from the slim checkpoint to the same numbers."""
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    flags = ("--freeze-text", "--freeze-image")
    full = tmp_path / "full"
    compared: list[int] = []
    real_save_latest = FoldCheckpoints.save_latest

    def checking_save_latest(self, model, *args, **kwargs):
        stored = load_checkpoint(self.run_dir.frozen_towers, ("model",))["model"]
        state = model.state_dict()
        assert any(".bn" in key or "running_mean" in key for key in stored)  # buffers are shared too
        assert all(torch.equal(state[key], value) for key, value in stored.items())
        compared.append(len(stored))
        real_save_latest(self, model, *args, **kwargs)

    monkeypatch.setattr(FoldCheckpoints, "save_latest", checking_save_latest)
    assert train(full, data, tiny_text_encoder, *flags) == 0
    monkeypatch.undo()
    assert len(compared) == 6  # epochs 0, 1, 2 of two folds

    interrupted = tmp_path / "interrupted"
    calls = {"n": 0}
    real_train = training.fold.train_one_epoch

    def stop_in_fold_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # fold 2, epoch 2: epoch 1 of fold 2 is saved
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training.fold, "train_one_epoch", stop_in_fold_2)
    assert train(interrupted, data, tiny_text_encoder, *flags) == 130
    monkeypatch.undo()
    latest = load_checkpoint(interrupted / "fold_2" / "checkpoint_latest.pth")
    assert "optimizer" in latest and latest["epoch"] == 1
    assert not any(key.startswith(("text_encoder.", "image_encoder.")) for key in latest["model"])

    assert train_clip.main(["--resume", "--output-dir", str(interrupted),
                            "--log-file", str(tmp_path / "resume.log")]) == 0
    assert "Fold 2: resuming after epoch 1" in (tmp_path / "resume.log").read_text()
    keys = ("folds", "mean", "std", "oof")
    summaries = [json.loads((run / "cv_summary.json").read_text()) for run in (full, interrupted)]
    assert [{k: s[k] for k in keys} for s in summaries][0] == [{k: s[k] for k in keys} for s in summaries][1]
    assert file_sha256(full / FROZEN_FILE) == file_sha256(interrupted / FROZEN_FILE)


def test_resume_refuses_a_frozen_towers_file_that_no_longer_matches(tmp_path, tiny_text_encoder, monkeypatch,
                                                                   capsys):
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # after fold 1's epoch 0: frozen_towers.pth and a checkpoint are written

    monkeypatch.setattr(training.fold, "train_one_epoch", interrupt)
    assert train(out, data, tiny_text_encoder, "--freeze-text") == 130
    monkeypatch.undo()
    stored = load_checkpoint(out / FROZEN_FILE)
    first = next(iter(stored["model"]))
    stored["model"][first] = stored["model"][first] + 1
    save_checkpoint(out / FROZEN_FILE, stored)
    before = file_sha256(out / FROZEN_FILE)
    capsys.readouterr()
    assert train_clip.main(["--resume", "--output-dir", str(out), "--log-file", str(tmp_path / "r.log")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(out / FROZEN_FILE) in errors[0] and "--overwrite" in errors[0]
    assert file_sha256(out / FROZEN_FILE) == before  # nothing rewritten


# ---------------------------------------------------------------------------------------------
# predict.py with the shared file
# ---------------------------------------------------------------------------------------------
def test_predict_on_a_copied_run_folder_reproduces_the_validation_results(frozen_text_run, tmp_path):
    data, run = frozen_text_run
    copy = shutil.copytree(run, tmp_path / "elsewhere" / "复制的运行")
    hidden = run.with_name("run_hidden")
    run.rename(hidden)  # the original location is gone: nothing may point there
    try:
        probs = predict_probs(copy, data, tmp_path / "fold1.csv", "--fold", "1")
    finally:
        hidden.rename(run)
    with (run / "oof_predictions.csv").open(encoding="utf-8", newline="") as handle:
        oof = {row["path"]: [float(v) for k, v in row.items() if k.startswith("prob_")]
               for row in csv.DictReader(handle) if row["fold"] == "1"}
    assert oof
    np.testing.assert_allclose([probs[p] for p in sorted(oof)], [oof[p] for p in sorted(oof)], rtol=0,
                               atol=PROBABILITY_TOLERANCE)


@pytest.mark.parametrize("damage", ["edited", "missing"])
def test_an_edited_or_missing_frozen_towers_file_is_refused_in_one_line(frozen_text_run, tmp_path, capsys, damage):
    data, run = frozen_text_run
    copy = shutil.copytree(run, tmp_path / "copy")
    if damage == "missing":
        (copy / FROZEN_FILE).unlink()
    else:  # a valid checkpoint with one weight changed: only the hash can tell
        stored = load_checkpoint(copy / FROZEN_FILE)
        first = next(iter(stored["model"]))
        stored["model"][first] = stored["model"][first] + 1
        save_checkpoint(copy / FROZEN_FILE, stored)
    output = tmp_path / "out.csv"
    assert predict.main(["--run-dir", str(copy), "--images", str(data), "--output", str(output)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("error:") and str(copy / FROZEN_FILE) in err[0]
    assert ("missing" in err[0]) if damage == "missing" else ("SHA-256" in err[0] and "restore" in err[0])
    assert not output.exists()


@pytest.mark.parametrize("mark", ["train_clip/1", None])
def test_a_checkpoint_of_another_format_is_refused_naming_the_file(frozen_text_run, tmp_path, capsys, mark):
    data, run = frozen_text_run
    copy = shutil.copytree(run, tmp_path / "copy")
    for path in checkpoints_of(copy):
        saved = load_checkpoint(path)
        saved.pop("format") if mark is None else saved.update(format=mark)
        save_recorded(path, saved)
    output = tmp_path / "out.csv"
    assert predict.main(["--run-dir", str(copy), "--images", str(data), "--output", str(output)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and "checkpoint_best.pth" in err[0] and CHECKPOINT_FORMAT in err[0], err
    assert not output.exists()
    with pytest.raises(CheckpointError, match=CHECKPOINT_FORMAT):
        load_best_model_state(RunDir(copy), 1)


# ---------------------------------------------------------------------------------------------
# One copy when the last epoch is the best
# ---------------------------------------------------------------------------------------------
def test_finished_folds_link_latest_to_best_exactly_when_the_last_epoch_is_the_best(frozen_text_run):
    _, run = frozen_text_run
    for fold in (1, 2):
        best, latest = run / f"fold_{fold}" / "checkpoint_best.pth", run / f"fold_{fold}" / "checkpoint_latest.pth"
        result = json.loads((run / f"fold_{fold}" / "result.json").read_text())
        last_epoch = json.loads((run / f"fold_{fold}" / "history.json").read_text())[-1]["epoch"]
        assert os.path.samefile(best, latest) == (result["best_epoch"] == last_epoch)
        assert load_checkpoint(latest)["epoch"] == last_epoch


class Tiny(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(64, 64)
        self.register_buffer("steps", torch.tensor(seed))


def fold_checkpoints(tmp_path: Path, dtype: str = "float32") -> FoldCheckpoints:
    run_dir = RunDir(tmp_path / "run")
    run_dir.fold_dir(1).mkdir(parents=True)
    return FoldCheckpoints(run_dir, 1, {"config": {"seed": 0}}, None, dtype)


def save_epoch(checkpoints: FoldCheckpoints, model: torch.nn.Module, epoch: int, best_epoch: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoints.save_latest(model, epoch, {"accuracy": 0.5}, {"optimizer": optimizer.state_dict(), "scheduler": {},
                                                             "scaler": {}},
                            {"epoch": epoch, "best_epoch": best_epoch}, torch.Generator())


def test_latest_becomes_a_hard_link_to_best_and_a_later_best_write_leaves_it_alone(tmp_path):
    checkpoints = fold_checkpoints(tmp_path)
    model = Tiny(1)
    checkpoints.save_best(model, 3, {"accuracy": 0.5})
    save_epoch(checkpoints, model, 3, best_epoch=3)
    best, latest = checkpoints.run_dir.best_checkpoint(1), checkpoints.run_dir.latest_checkpoint(1)
    checkpoints.drop_training_state()
    assert os.path.samefile(best, latest) and latest.stat().st_nlink == 2
    assert not list(latest.parent.glob(".*.tmp"))
    linked = latest.read_bytes()

    checkpoints.save_best(Tiny(2), 4, {"accuracy": 0.9})  # replaces the name: the link breaks
    assert not os.path.samefile(best, latest) and latest.stat().st_nlink == 1
    assert latest.read_bytes() == linked
    assert torch.equal(load_checkpoint(latest)["model"]["layer.weight"], model.layer.weight)


def test_no_link_when_the_best_epoch_is_earlier(tmp_path):
    checkpoints = fold_checkpoints(tmp_path)
    checkpoints.save_best(Tiny(1), 1, {"accuracy": 0.9})
    last = Tiny(2)
    save_epoch(checkpoints, last, 2, best_epoch=1)
    checkpoints.drop_training_state()
    best, latest = checkpoints.run_dir.best_checkpoint(1), checkpoints.run_dir.latest_checkpoint(1)
    assert not os.path.samefile(best, latest)
    saved = load_checkpoint(latest)
    assert saved["epoch"] == 2 and not set(TRAINING_STATE_KEYS) & set(saved)
    assert torch.equal(saved["model"]["layer.weight"], last.layer.weight)


def test_a_file_system_without_hard_links_gets_a_copy(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    checkpoints = fold_checkpoints(tmp_path)
    checkpoints.save_best(Tiny(1), 2, {"accuracy": 0.5})
    save_epoch(checkpoints, Tiny(1), 2, best_epoch=2)
    monkeypatch.setattr(os, "link", refuse)
    checkpoints.drop_training_state()
    best, latest = checkpoints.run_dir.best_checkpoint(1), checkpoints.run_dir.latest_checkpoint(1)
    assert not os.path.samefile(best, latest) and latest.read_bytes() == best.read_bytes()


# ---------------------------------------------------------------------------------------------
# --checkpoint-dtype
# ---------------------------------------------------------------------------------------------
def test_checkpoint_dtype_casts_saved_models_but_not_the_training_state(tmp_path):
    checkpoints = fold_checkpoints(tmp_path, "bfloat16")
    model = Tiny(1)
    checkpoints.save_best(model, 1, {"accuracy": 0.9})
    save_epoch(checkpoints, model, 2, best_epoch=1)
    latest = checkpoints.run_dir.latest_checkpoint(1)
    training_latest = load_checkpoint(latest)
    assert training_latest["model"]["layer.weight"].dtype == torch.float32  # --resume stays exact
    best = load_checkpoint(checkpoints.run_dir.best_checkpoint(1))["model"]
    assert best["layer.weight"].dtype == torch.bfloat16 and best["steps"].dtype == torch.int64
    checkpoints.drop_training_state()
    final = load_checkpoint(latest)["model"]
    assert final["layer.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(final["layer.weight"].float(), model.layer.weight.detach(), rtol=1e-2, atol=1e-2)


def test_bfloat16_checkpoints_halve_the_weights_and_predict_close_to_float32(frozen_text_run, tmp_path,
                                                                            tiny_text_encoder):
    data, run = frozen_text_run
    half = tmp_path / "bf16"
    assert train(half, data, tiny_text_encoder, "--freeze-text", "--checkpoint-dtype", "bfloat16") == 0
    for fold in (1, 2):  # training itself is unchanged
        assert ([{k: v for k, v in row.items() if k not in ("seconds", "train_seconds")}
                 for row in json.loads((half / f"fold_{fold}" / "history.json").read_text())]
                == [{k: v for k, v in row.items() if k not in ("seconds", "train_seconds")}
                    for row in json.loads((run / f"fold_{fold}" / "history.json").read_text())])
    full_best = load_checkpoint(run / "fold_1" / "checkpoint_best.pth")["model"]
    half_best = load_checkpoint(half / "fold_1" / "checkpoint_best.pth")["model"]
    assert {v.dtype for v in half_best.values() if v.is_floating_point()} == {torch.bfloat16}
    assert tensor_bytes(half_best) < 0.55 * tensor_bytes(full_best)
    # The frozen tower is stored once, as trained: the same file as the float32 run's.
    assert file_sha256(half / FROZEN_FILE) == file_sha256(run / FROZEN_FILE)
    full_probs = predict_probs(run, data, tmp_path / "f32.csv")
    half_probs = predict_probs(half, data, tmp_path / "bf16.csv")
    assert full_probs.keys() == half_probs.keys()
    paths = sorted(full_probs)
    differences = np.abs(np.array([half_probs[p] for p in paths]) - np.array([full_probs[p] for p in paths]))
    assert differences.max() < 0.02


def test_the_frozen_towers_file_belongs_to_the_run(tmp_path):
    """--overwrite deletes it (and a killed write's leftover); a folder holding it is not foreign."""
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    save_checkpoint(run_dir.frozen_towers, {"model": {"w": torch.zeros(2)}})
    leftover = run_dir.path / f".{FROZEN_FILE}.abcd1234.tmp"
    leftover.write_bytes(b"partial")
    assert run_dir.foreign_paths() == [] and run_dir.holds_results()
    run_dir.clear()
    assert not run_dir.frozen_towers.exists() and not leftover.exists()


# ---------------------------------------------------------------------------------------------
# A trainable tower's lookup tables: the untrained table once per run, the rows that trained per checkpoint
# ---------------------------------------------------------------------------------------------
WORD_TABLE = "text_encoder.model.embeddings.word_embeddings.weight"


def test_trainable_text_checkpoints_hold_only_the_token_rows_that_trained_and_load_exactly(
        tmp_path, tiny_text_encoder, monkeypatch):
    """Every checkpoint written while training reads back as the model in memory, bit for bit; the
    word table is stored whole once (the untrained one) and per checkpoint only as the rows of the
    descriptions' tokens; predict.py reproduces the run's own validation predictions."""
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    compared: list[int] = []
    real_save_latest = FoldCheckpoints.save_latest

    def checking_save_latest(self, model, *args, **kwargs):
        real_save_latest(self, model, *args, **kwargs)
        path = self.run_dir.latest_checkpoint(self.fold)
        saved = load_checkpoint(path)
        whole = full_model_state(saved, path)
        state = model.state_dict()
        assert whole.keys() == state.keys() and all(torch.equal(whole[k], state[k].cpu()) for k in state)
        compared.append(len(saved["model"][WORD_TABLE + "#rows"]))

    monkeypatch.setattr(FoldCheckpoints, "save_latest", checking_save_latest)
    run = tmp_path / "run"
    assert train(run, data, tiny_text_encoder) == 0
    monkeypatch.undo()
    assert len(compared) == 6 and compared[0] == 0  # epoch 0 (untrained): no row differs yet
    shared = load_checkpoint(run / FROZEN_FILE, ("model",))["model"]
    assert WORD_TABLE in shared and all(".embeddings." in key for key in shared)
    vocab = shared[WORD_TABLE].shape[0]
    for path in checkpoints_of(run):
        saved = load_checkpoint(path)
        rows = saved["model"][WORD_TABLE + "#rows"]
        assert WORD_TABLE not in saved["model"] and len(rows) < vocab // 100  # the descriptions' tokens
        assert (len(rows) > 0) == (saved["epoch"] > 0)  # epoch 0 is the untrained model
        table = full_model_state(saved, path)[WORD_TABLE]
        untouched = torch.ones(vocab, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(table[untouched], shared[WORD_TABLE][untouched])
        assert (table[rows] != shared[WORD_TABLE][rows]).any(dim=1).all()
        assert path.stat().st_size < tensor_bytes({"t": shared[WORD_TABLE]})

    oof = {}
    with (run / "oof_predictions.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            oof[row["path"]] = (int(row["fold"]), [float(v) for k, v in row.items() if k.startswith("prob_")])
    for fold in (1, 2):
        probs = predict_probs(run, data, tmp_path / f"fold{fold}.csv", "--fold", str(fold))
        for path, (owner, expected) in oof.items():
            if owner == fold:
                np.testing.assert_allclose(probs[path], expected, rtol=0, atol=PROBABILITY_TOLERANCE)


def test_lookup_tables_get_no_weight_decay(tiny_text_encoder):
    from models.clip_model import build_clip_model
    from training.config import TrainConfig
    from training.engine import parameter_groups

    model = build_clip_model("starnet_s050", f"hf:{tiny_text_encoder}", 16, 0.07, [["a"], ["b"]], img_size=24)
    decay_of = {id(p): group["weight_decay"] for group in parameter_groups(model, TrainConfig(weight_decay=0.1))
                for p in group["params"]}
    tables = [m.weight for m in model.text_encoder.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(tables) == 3 and all(decay_of[id(t)] == 0.0 for t in tables)  # word, position, token type
    assert decay_of[id(model.text_proj.weight)] == 0.1


def test_predict_reads_and_hashes_the_shared_file_once_for_all_folds(frozen_text_run, tmp_path, monkeypatch):
    data, run = frozen_text_run
    expected = predict_probs(run, data, tmp_path / "before.csv")
    hashed: list[Path] = []
    real_sha256 = training.checkpoint_format.file_sha256

    def counting_sha256(path):
        hashed.append(Path(path))
        return real_sha256(path)

    monkeypatch.setattr(training.checkpoint_format, "file_sha256", counting_sha256)
    assert predict_probs(run, data, tmp_path / "once.csv") == expected  # the 2-fold ensemble
    assert [p.name for p in hashed] == [FROZEN_FILE]


def test_shared_files_read_a_replaced_file_again(frozen_text_run, tmp_path):
    _, run = frozen_text_run
    copy = shutil.copytree(run, tmp_path / "copy")
    files = training.checkpoint_format.SharedFiles()
    path = copy / "fold_1" / "checkpoint_best.pth"
    saved = load_checkpoint(path)
    full_model_state(saved, path, files)
    shared = load_checkpoint(copy / FROZEN_FILE)
    first = next(iter(shared["model"]))
    shared["model"][first] = shared["model"][first] + 1
    save_checkpoint(copy / FROZEN_FILE, shared)  # edited after the first read
    with pytest.raises(training.checkpoint_format.CheckpointError, match="SHA-256 differs"):
        full_model_state(saved, path, files)




# -- the estimate of a fold's checkpoint bytes that the space check before each fold uses ----------
def train_a_step(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_estimate_of_a_folds_checkpoint_bytes_matches_the_files_written(tmp_path: Path, dtype):
    run_dir = RunDir(tmp_path / "run")
    run_dir.fold_dir(1).mkdir(parents=True)
    checkpoints = FoldCheckpoints(run_dir, 1, {"config": {"seed": 0}}, None, dtype)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    peak, kept = checkpoints.disk_bytes(model, save_best=True)
    optimizer = train_a_step(model)  # AdamW's two moments exist after the first step
    checkpoints.save_best(model, 1, {"accuracy": 0.5})
    checkpoints.save_latest(model, 1, {"accuracy": 0.5}, {"optimizer": optimizer.state_dict(), "scheduler": {},
                                                           "scaler": {}}, {"epoch": 1, "best_epoch": 1},
                            torch.Generator())
    best = run_dir.best_checkpoint(1).stat().st_size
    latest = run_dir.latest_checkpoint(1).stat().st_size
    # While training: the best, the latest, and a new latest beside the old one. The estimate counts
    # the tensors' bytes; the files add a few hundred bytes of zip records and pickled values each
    # (3 files of ~0.3-0.8 MB here: under 2 %), never more than they hold: it must not refuse a fold
    # that fits, and may be short by that overhead only.
    actual_peak = best + 2 * latest
    assert 0.98 * actual_peak <= peak <= actual_peak
    checkpoints.drop_training_state()  # the finished fold keeps the best and the last model
    actual_kept = sum({p.stat().st_ino: p.stat().st_size
                       for p in (run_dir.best_checkpoint(1), run_dir.latest_checkpoint(1))}.values())
    assert 0.98 * actual_kept <= kept <= 2 * actual_kept  # the latest may become a link to the best
