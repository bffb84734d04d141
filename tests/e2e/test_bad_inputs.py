"""Bad input answered with one clear line, and nothing already written lost or changed (issue 6)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.pixels
import train_clip
from tests.helpers import make_image_tree
from utils.io import CheckpointError, load_checkpoint, save_checkpoint


def run_args(data: Path, text_encoder: Path, out: Path, log: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "starnet_s050",
            "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--use-cv",
            "--n-splits", "2", "--output-dir", str(out), "--log-file", str(log), *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory, tiny_text_encoder):
    """A finished run whose files every failing call below must leave exactly as they are."""
    root = tmp_path_factory.mktemp("previous")
    data = make_image_tree(root / "data", {"a": 4, "b": 4})
    out = root / "run"
    assert train_clip.main(run_args(data, tiny_text_encoder, out, root / "run.log")) == 0
    return out, snapshot(out)


def fails_cleanly(args: list[str], previous_run, capsys) -> str:
    """Run with --overwrite onto the previous run: the error must come before anything is replaced."""
    out, before = previous_run
    assert train_clip.main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "ERROR" in line or line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert snapshot(out) == before
    return errors[0]


def write_mixed_bag(data: Path) -> dict[str, Path]:
    """Valid images of every mode plus each kind of bad file."""
    make_image_tree(data, {"a": 4, "b": 4})
    rng = np.random.default_rng(1)
    modes = {
        "L": Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), "L"),
        "I;16": Image.fromarray(rng.integers(0, 4000, (20, 20), dtype=np.uint16)),
        "RGB": Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "RGB"),
        "RGBA": Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA"),
        "P": Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "RGB").convert("P"),
    }
    for i, (mode, image) in enumerate(modes.items()):
        image.save(data / ("a" if i % 2 else "b") / f"mode_{mode.replace(';', '_')}.png")
    bad = {"truncated": data / "a" / "truncated.png", "garbage": data / "b" / "garbage.jpg",
           "empty": data / "a" / "empty.png", "huge": data / "b" / "huge.png"}
    full = (data / "a" / "img_000.png").read_bytes()
    bad["truncated"].write_bytes(full[: len(full) // 2])
    bad["garbage"].write_bytes(b"this is not a JPEG at all")
    bad["empty"].write_bytes(b"")
    Image.new("L", (400, 300)).save(bad["huge"])
    (data / "a" / "notes.txt").write_text("not an image, ignored")
    shutil.copy(data / "a" / "img_001.png", data / "b" / "copy_of_a1.png")  # same image in two classes
    return bad


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path, tiny_text_encoder, monkeypatch):
    bad = write_mixed_bag(tmp_path / "data")
    monkeypatch.setattr(data.pixels, "MAX_PIXELS", 100_000)  # "huge" is 120,000 pixels
    log = tmp_path / "run.log"
    assert train_clip.main(run_args(tmp_path / "data", tiny_text_encoder, tmp_path / "out", log)) == 0
    text = log.read_text(encoding="utf-8")
    assert "Skipping 4 unreadable image(s)" in text
    for path in bad.values():
        assert str(path) in text
    assert "empty file (0 bytes)" in text and "is more than 100,000" in text
    assert "Identical images in different classes (a, b)" in text and "copy_of_a1.png" in text
    folds = json.loads((tmp_path / "out" / "folds.json").read_text())
    used = {p for f in folds["folds"] for p in f["val"]}
    assert len(used) == 8 + 5 + 1  # the tree, five modes, the copy; no bad file, no notes.txt
    assert not used & {str(p.relative_to(tmp_path / "data")) for p in bad.values()}


def test_strict_images_stops_before_touching_earlier_results(tmp_path, tiny_text_encoder, previous_run, capsys):
    bad = write_mixed_bag(tmp_path / "data")
    out, _ = previous_run
    line = fails_cleanly(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log", "--strict-images"),
                         previous_run, capsys)
    assert "--strict-images" in line and str(bad["truncated"]) in line


def test_empty_class_folder_is_named(tmp_path, tiny_text_encoder, previous_run, capsys):
    make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    (tmp_path / "data" / "c_empty").mkdir()
    out, _ = previous_run
    line = fails_cleanly(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log"), previous_run, capsys)
    assert "c_empty" in line and "no image" in line


def test_class_texts_with_an_empty_text_or_not_utf8(tmp_path, tiny_text_encoder, previous_run, capsys):
    make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out, _ = previous_run
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"a": "fine", "b": ["  "]}), encoding="utf-8")
    line = fails_cleanly(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log",
                                  "--class-texts-file", str(empty)), previous_run, capsys)
    assert str(empty) in line and "'b' has an empty description" in line
    gbk = tmp_path / "gbk.json"
    gbk.write_bytes(json.dumps({"a": "股骨柄", "b": "髋臼杯"}, ensure_ascii=False).encode("gbk"))
    line = fails_cleanly(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log",
                                  "--class-texts-file", str(gbk)), previous_run, capsys)
    assert str(gbk) in line and "not UTF-8" in line


def test_config_file_with_wrong_types(tmp_path, tiny_text_encoder, previous_run, capsys):
    make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out, _ = previous_run
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"batch_size": "16", "use_cv": True}]), encoding="utf-8")
    line = fails_cleanly(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log",
                                  "--config", str(config)), previous_run, capsys)
    assert "batch_size" in line and "integer" in line and str(config) in line


def test_batch_size_larger_than_a_training_fold(tmp_path, tiny_text_encoder, previous_run, capsys):
    make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out, _ = previous_run
    args = run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log")
    args[args.index("--batch-size") + 1] = "64"
    line = fails_cleanly(args, previous_run, capsys)
    assert "--batch-size 64" in line and "smallest training fold (2 images after its inner validation split)" in line


def test_checkpoint_with_unexpected_content_is_refused(tmp_path):
    odd = tmp_path / "odd.pth"
    torch.save([1, 2, 3], odd)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(odd)
    save_checkpoint(odd, {"weights": torch.ones(2)})
    with pytest.raises(CheckpointError, match="lacks model"):
        load_checkpoint(odd, ("model",))

    # Arbitrary objects need an unsafe, code-executing load; the weights-only loader refuses them.
    torch.save({"model": Path("/etc/passwd")}, odd)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(odd, ("model",))


def test_resume_with_a_tampered_latest_checkpoint_trains_that_fold_again(tmp_path, tiny_text_encoder, capsys):
    make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "run"
    assert train_clip.main(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "1.log")) == 0
    (out / "cv_summary.json").unlink()
    (out / "fold_2" / "result.json").unlink()
    save_checkpoint(out / "fold_2" / "checkpoint_latest.pth", {"model": {}})
    # Not the file that was written (its checksums.json says so): the unfinished fold starts again (issue 24).
    assert train_clip.main(["--resume", "--output-dir", str(out), "--log-file", str(tmp_path / "2.log")]) == 0
    assert "training fold 2 again from its start" in capsys.readouterr().err
    assert (out / "fold_1" / "result.json").exists() and (out / "fold_2" / "result.json").exists()


def test_tensorboard_without_the_package_is_refused_up_front(tmp_path, tiny_text_encoder, previous_run, capsys,
                                                            monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    out, _ = previous_run
    line = fails_cleanly(run_args(tmp_path / "data", tiny_text_encoder, out, tmp_path / "l.log", "--tensorboard"),
                         previous_run, capsys)
    assert "--tensorboard needs the tensorboard package" in line
