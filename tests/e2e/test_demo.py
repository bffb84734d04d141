"""The embedded demo dataset: real digits, a folder per class, texts in two languages, atomic build."""
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import data.demo
from data.demo import build_demo_dataset, class_folder
from data.folder import scan_image_folder


def test_demo_tree_holds_every_digit_once_with_texts_in_english_and_chinese(tmp_path):
    images_dir = build_demo_dataset(tmp_path / "digits")
    scanned = scan_image_folder(images_dir)
    digits = load_digits()
    assert scanned.class_names == [class_folder(d) for d in range(10)]
    assert scanned.class_counts() == np.bincount(digits.target).tolist()
    first_zero = np.asarray(Image.open(images_dir / "0_zero" / "digit_0_0000.png"))
    np.testing.assert_array_equal(first_zero, np.round(digits.images[0] * 255 / 16).astype(np.uint8))
    english = json.loads((tmp_path / "digits" / "class_texts_en.json").read_text(encoding="utf-8"))
    chinese = json.loads((tmp_path / "digits" / "class_texts_zh.json").read_text(encoding="utf-8"))
    assert list(english) == list(chinese) == scanned.class_names
    assert "seven" in english["7_seven"][0] and "七" in chinese["7_seven"][0]


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(out_dir):
        (out_dir / "images" / "0_zero").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(data.demo, "_write_demo_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        build_demo_dataset(tmp_path / "digits")
    assert not (tmp_path / "digits").exists()  # the next `make demo` builds it again


def test_existing_demo_folder_is_not_overwritten(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "mine.txt").write_text("keep")
    assert data.demo.main([str(tmp_path / "digits")]) == 2
    assert (tmp_path / "digits" / "mine.txt").read_text() == "keep"
