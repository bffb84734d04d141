"""Bad input: one clear line on stderr, a non-zero exit, before training, nothing under --output-dir."""
import json
import os
import subprocess
import sys

import pytest

import train_clip
from tests.conftest import ROOT
from tests.helpers import make_image_tree


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def run_main(argv, capsys):
    try:
        code = train_clip.main([str(a) for a in argv])
    except SystemExit as exc:  # an error must not escape main as an exit either
        pytest.fail(f"main raised SystemExit({exc.code}) instead of returning a code")
    return code, capsys.readouterr().err


def base_args(data, out, tmp_path, text_encoder):
    return ["--data-dir", data, "--output-dir", out, "--log-file", tmp_path / "logs" / "run.log",
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{text_encoder}", "--img-size", "16",
            "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]


def assert_refused(code, err, out, *expected):
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))
    return lines[0]


def test_missing_data_dir_value(tmp_path, out, capsys):
    code, err = run_main(["--output-dir", out, "--data-dir"], capsys)
    assert_refused(code, err, out, "--data-dir", "expected one argument")


def test_no_data_dir(tmp_path, out, capsys):
    code, err = run_main(["--output-dir", out, "--epochs", "1"], capsys)
    assert_refused(code, err, out, "--data-dir is required")


def test_nonexistent_data_dir(tmp_path, out, capsys, tiny_text_encoder):
    code, err = run_main(base_args(tmp_path / "nowhere", out, tmp_path, tiny_text_encoder), capsys)
    assert_refused(code, err, out, "--data-dir", "nowhere", "does not exist")


def test_empty_data_dir(tmp_path, out, capsys, tiny_text_encoder):
    (tmp_path / "empty").mkdir()
    code, err = run_main(base_args(tmp_path / "empty", out, tmp_path, tiny_text_encoder), capsys)
    assert_refused(code, err, out, "holds no class folders")


def test_fewer_than_two_classes(tmp_path, out, capsys, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"股骨柄A": 6})
    code, err = run_main(base_args(data, out, tmp_path, tiny_text_encoder), capsys)
    assert_refused(code, err, out, "only one class", "股骨柄A")


def test_class_smaller_than_n_splits_is_named(tmp_path, out, capsys, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"cat_a": 8, "股骨柄A": 3})
    code, err = run_main(base_args(data, out, tmp_path, tiny_text_encoder) + ["--use-cv", "--n-splits", "5"],
                         capsys)
    line = assert_refused(code, err, out, "--n-splits 5", "股骨柄A (3)")
    assert "cat_a" not in line


def test_class_with_one_image_without_cv_is_named(tmp_path, out, capsys, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"cat_a": 8, "cat_b": 8, "股骨柄A": 1})
    code, err = run_main(base_args(data, out, tmp_path, tiny_text_encoder), capsys)
    assert_refused(code, err, out, "股骨柄A (1)")


def test_class_texts_not_json(tmp_path, out, capsys, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"cat_a": 4, "cat_b": 4})
    texts = tmp_path / "class_texts.json"
    texts.write_text('{"cat_a": "a",\n "cat_b": "b",}', encoding="utf-8")
    code, err = run_main(base_args(data, out, tmp_path, tiny_text_encoder) + ["--class-texts-file", texts],
                         capsys)
    assert_refused(code, err, out, "--class-texts-file", str(texts), "not valid JSON", "line 2")


def test_class_texts_lacking_classes_without_template(tmp_path, out, capsys, tiny_text_encoder):
    data = make_image_tree(tmp_path / "data", {"cat_a": 4, "cat_b": 4, "股骨柄A": 4})
    texts = tmp_path / "class_texts.json"
    texts.write_text(json.dumps({"cat_a": "an X-ray of a"}), encoding="utf-8")
    code, err = run_main(base_args(data, out, tmp_path, tiny_text_encoder) + ["--class-texts-file", texts],
                         capsys)
    assert_refused(code, err, out, "cat_b", "股骨柄A", "--text-template")


def test_unknown_image_encoder_lists_names_and_suggests(tmp_path, out, capsys, tiny_text_encoder, image_tree):
    args = base_args(image_tree, out, tmp_path, tiny_text_encoder)
    args[args.index("--image-encoder") + 1] = "resnet19"
    code, err = run_main(args, capsys)
    assert_refused(code, err, out, "--image-encoder", "'resnet19'", "did you mean 'resnet18'",
                   "resnet34", "resnet50", "resnet101", "resnet152")


def test_unknown_text_encoder_lists_names_and_suggests(tmp_path, out, capsys, image_tree):
    args = base_args(image_tree, out, tmp_path, "unused")
    args[args.index("--text-encoder") + 1] = "bert-base-chinse"
    code, err = run_main(args, capsys)
    assert_refused(code, err, out, "--text-encoder", "'bert-base-chinse'", "did you mean 'bert-base-chinese'",
                   "clip:ViT-B/32", "clip:RN50")


def test_unknown_config_key_suggests_the_closest(tmp_path, out, capsys, image_tree):
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"data_dir": str(image_tree), "output_dir": str(out), "n_split": 2}]),
                      encoding="utf-8")
    code, err = run_main(["--config", config], capsys)
    assert_refused(code, err, out, "unknown key 'n_split'", "did you mean 'n_splits'", str(config))


def test_batch_larger_than_the_training_fold(tmp_path, out, capsys, tiny_text_encoder, image_tree):
    args = base_args(image_tree, out, tmp_path, tiny_text_encoder) + ["--use-cv", "--n-splits", "2"]
    args[args.index("--batch-size") + 1] = "64"
    code, err = run_main(args, capsys)
    assert_refused(code, err, out, "--batch-size 64")


def test_log_file_inside_the_output_dir_is_not_taken_for_results(tmp_path, out, capsys, tiny_text_encoder,
                                                                   image_tree):
    args = base_args(image_tree, out, tmp_path, tiny_text_encoder) + ["--use-cv", "--n-splits", "2"]
    args[args.index("--log-file") + 1] = out / "train.log"
    args[args.index("--batch-size") + 1] = "64"  # fails after the output-dir check
    code, err = run_main(args, capsys)
    assert code != 0 and "--batch-size 64" in err and "already holds results" not in err
    assert [p.name for p in out.iterdir()] == ["train.log"]


def test_existing_results_are_not_overwritten(tmp_path, out, capsys, tiny_text_encoder, image_tree):
    out.mkdir()
    (out / "cv_summary.json").write_text("{}", encoding="utf-8")
    code, err = run_main(base_args(image_tree, out, tmp_path, tiny_text_encoder), capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["cv_summary.json"]
    assert (out / "cv_summary.json").read_text(encoding="utf-8") == "{}"


def test_the_command_line_exits_with_one_line(tmp_path):
    """The real process: exit code 2 and a single stderr line (no traceback, no usage)."""
    data = make_image_tree(tmp_path / "data", {"cat_a": 6, "股骨柄A": 2})
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_clip.py"), "--data-dir", str(data), "--output-dir", str(out),
         "--log-file", str(tmp_path / "run.log"), "--use-cv", "--n-splits", "3", "--text-encoder", "hf:unused"],
        cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "股骨柄A (2)" in lines[0] and "--n-splits 3" in lines[0]
    assert result.stdout == ""
    assert not out.exists()
    assert not (tmp_path / "checkpoints").exists()
