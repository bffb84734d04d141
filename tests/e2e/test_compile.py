"""--compile: the image encoder (and a trainable text tower) runs through torch.compile, and a run
trains and saves as usual.

torch.compile is asked for its ``eager`` backend here: the test checks our wiring (which module is
compiled, that TorchDynamo traces the encoder through training and evaluation, that checkpoints keep
plain keys) in seconds; inductor's code generation took minutes on two shared cores for a tiny model.
benchmarks/bench_gpu_step.py runs the default backend.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import train_clip
from tests.helpers import make_image_tree
from training.checkpoints import load_best_model_state
from utils.run_dir import RunDir

pytestmark = [pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                 reason="torch.compile's CPU backend (inductor) needs a C compiler")]


@pytest.mark.parametrize("freeze_text, compiled_towers, compile_mode", [
    (False, ["ImageEncoder", "HFTextEncoder"], []),  # the trainable text tower runs every step
    # A frozen one runs once per fold: not worth its compilation. CUDA graphs on the CPU: the default mode.
    (True, ["ImageEncoder"], ["--compile-mode", "reduce-overhead"]),
])
def test_compile_trains_one_epoch_and_saves_plain_state_dict_keys(tmp_path: Path, tiny_text_encoder: Path,
                                                                   monkeypatch, freeze_text, compiled_towers,
                                                                   compile_mode):
    compiled, modes = [], []
    original = torch.nn.Module.compile

    def record(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        modes.append(kwargs.get("mode"))
        return original(module, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", record)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    data = make_image_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--log-file", str(tmp_path / "run.log"),
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{tiny_text_encoder}", "--img-size", "32",
            "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--embed-dim", "16", "--compile",
            "--bootstrap-resamples", "0"] + (["--freeze-text"] if freeze_text else []) + compile_mode
    assert train_clip.main(argv) == 0
    assert compiled == compiled_towers
    assert modes == [None] * len(compiled)  # torch.compile's default mode, as without --compile-mode
    fallback = "--compile-mode reduce-overhead records CUDA graphs, which need a GPU"
    assert (fallback in (tmp_path / "run.log").read_text()) == bool(compile_mode)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the encoder was traced, not skipped
    state = load_best_model_state(RunDir(out), 1)
    assert any(key.startswith("image_encoder.") for key in state) and any(key.startswith("text_encoder.")
                                                                          for key in state)
    assert not any("_orig_mod" in key for key in state)  # loads into an uncompiled model (predict.py)
