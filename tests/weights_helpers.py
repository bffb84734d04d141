"""Builders of local weight caches for the encoder tests: what a download would have left behind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

COMMIT = "0" * 40


def point_caches_at(monkeypatch: pytest.MonkeyPatch, root: Path) -> tuple[Path, Path]:
    """Empty TORCH_HOME and HuggingFace hub caches under ``root``; returns (torch hub dir, hf hub cache).

    The HuggingFace cache path is read by huggingface_hub at import, so its constant is patched
    as well as the environment variable.
    """
    from huggingface_hub import constants

    torch_home, hf_home = root / "torch_home", root / "hf_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    return torch_home / "hub", hf_home / "hub"


def put_in_hf_cache(hub_cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Lay ``files`` out as huggingface_hub does for ``repo`` at revision main; returns the snapshot."""
    repo_dir = hub_cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    return snapshot


TINY_OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {},
}


def make_tiny_open_clip(folder: Path, model_cfg: dict | None = None):
    """A tiny open_clip model saved as an hf-hub repo holds it: open_clip_config.json + weights
    (``model_cfg``: another model config than TINY_OPEN_CLIP_CONFIG's)."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = TINY_OPEN_CLIP_CONFIG if model_cfg is None else {**TINY_OPEN_CLIP_CONFIG, "model_cfg": model_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    return model
