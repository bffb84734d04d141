"""The checks before anything is written, and the verdict every torchrun process shares."""
from __future__ import annotations

from pathlib import Path

import pytest

from data.folder import DataError
from tests.helpers import make_image_tree
from training.arguments import config_from_args
from training.distributed import Distributed
from training.inputs import check_inputs, checked_and_locked
from utils.errors import UserError
from utils.run_dir import RunDir


def config(data: Path, out: Path, tiny_text_encoder: Path):
    return config_from_args(["--data-dir", str(data), "--output-dir", str(out), "--image-encoder", "starnet_s050",
                             "--text-encoder", f"hf:{tiny_text_encoder}"])


def test_the_inputs_are_checked_and_the_folder_locked_while_the_run_holds_them(tmp_path, tiny_text_encoder):
    make_image_tree(tmp_path / "data", {"股骨柄A": 3, "股骨柄B": 2})
    cfg = config(tmp_path / "data", tmp_path / "out", tiny_text_encoder)
    run_dir = RunDir(cfg.resolved_output_dir())
    images, texts = check_inputs(cfg, run_dir)
    assert images.class_names == ["股骨柄A", "股骨柄B"] and texts == [["股骨柄A"], ["股骨柄B"]]
    assert not run_dir.path.exists()  # checking writes nothing
    with checked_and_locked(cfg, run_dir, Distributed()) as (locked_images, _):
        assert locked_images.paths == images.paths and run_dir.lock_holder() is not None
    assert run_dir.lock_holder() is None and not run_dir.path.exists()  # nothing written: nothing left


def test_rank_0_tells_the_others_its_refusal_and_they_stop_too(tmp_path, tiny_text_encoder, monkeypatch):
    cfg = config(tmp_path / "missing", tmp_path / "out", tiny_text_encoder)
    told = []
    monkeypatch.setattr(Distributed, "broadcast", lambda self, value: told.append(value) or value)
    with pytest.raises(DataError, match="missing"):
        with checked_and_locked(cfg, RunDir(tmp_path / "out"), Distributed(0, 2, 0)):
            pass
    assert len(told) == 1 and "missing" in told[0]
    monkeypatch.setattr(Distributed, "broadcast", lambda self, value: "rank 0's error")
    with pytest.raises(UserError, match="rank 0 refused the run"):
        with checked_and_locked(cfg, RunDir(tmp_path / "out"), Distributed(1, 2, 1)):
            pass
