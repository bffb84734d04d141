"""A HuggingFace tower's small files as byte tensors, and its token limit."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from models.hf_files import MAX_TOKENS, context_length, files_as_tensors, write_files


def test_files_survive_the_round_trip_byte_for_byte(tmp_path: Path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "vocab.txt").write_text("[PAD]\n股骨柄\n", encoding="utf-8")
    (source / "config.json").write_bytes(bytes(range(256)))
    (source / "sub").mkdir()  # only the files directly in the folder are kept
    files = files_as_tensors(source)
    assert sorted(files) == ["config.json", "vocab.txt"]
    target = tmp_path / "rebuilt"
    target.mkdir()
    write_files({"../escape/" + name: data for name, data in files.items()}, target)  # base names only
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "vocab.txt"]
    for name in files:
        assert (target / name).read_bytes() == (source / name).read_bytes()


def test_the_token_limit_is_the_smallest_of_ours_the_tokenizers_and_the_positions():
    assert context_length(SimpleNamespace(model_max_length=512), 77) == 77
    assert context_length(SimpleNamespace(model_max_length=64), 512) == 64
    assert context_length(SimpleNamespace(), None) == MAX_TOKENS
