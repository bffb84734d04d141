"""Class texts: the file, templates, and its errors."""
import logging

import pytest

from data.folder import DataError
from data.texts import load_class_texts
from utils.io import write_json


CLASSES = ["cat_a", "cat_b", "股骨柄A"]


def texts_file(tmp_path, content):
    path = tmp_path / "texts.json"
    write_json(path, content)
    return path


def test_texts_accept_a_string_or_a_list(tmp_path):
    path = texts_file(tmp_path, {"cat_a": "an X-ray of a", "cat_b": ["b one", "  b two "],
                                 "股骨柄A": "股骨柄A型的X光片"})
    assert load_class_texts(CLASSES, path, None) == [["an X-ray of a"], ["b one", "b two"], ["股骨柄A型的X光片"]]


def test_templates_add_to_every_class_after_its_file_descriptions(tmp_path):
    # Prompt ensembling: a class in the file keeps its descriptions and gains every template; a class
    # missing from the file has the templates only.
    path = texts_file(tmp_path, {"cat_a": ["from the file", "also from the file"]})
    texts = load_class_texts(CLASSES, path, ["这是一张{class_name}的图片", "an X-ray of {class_name}"])
    assert texts == [["from the file", "also from the file", "这是一张cat_a的图片", "an X-ray of cat_a"],
                     ["这是一张cat_b的图片", "an X-ray of cat_b"], ["这是一张股骨柄A的图片", "an X-ray of 股骨柄A"]]


def test_template_alone_and_neither(tmp_path):
    assert load_class_texts(CLASSES, None, ["a photo of {class_name}"])[2] == ["a photo of 股骨柄A"]
    assert load_class_texts(CLASSES, None, None) == [["cat_a"], ["cat_b"], ["股骨柄A"]]


def test_missing_classes_without_template_are_named(tmp_path):
    path = texts_file(tmp_path, {"cat_a": "a"})
    with pytest.raises(DataError) as info:
        load_class_texts(CLASSES, path, None)
    assert "cat_b" in str(info.value) and "股骨柄A" in str(info.value)
    assert "cat_a," not in str(info.value)
    assert "texts.json" in str(info.value)


@pytest.mark.parametrize("value", ["", "   ", [], ["ok", ""]])
def test_empty_description_is_an_error(tmp_path, value):
    path = texts_file(tmp_path, {"cat_a": "a", "cat_b": value, "股骨柄A": "c"})
    with pytest.raises(DataError, match="'cat_b' has an empty description"):
        load_class_texts(CLASSES, path, None)


@pytest.mark.parametrize("value", [3, ["ok", 4], {"text": "a"}, None])
def test_description_of_the_wrong_type_is_an_error(tmp_path, value):
    path = texts_file(tmp_path, {"cat_a": "a", "cat_b": value, "股骨柄A": "c"})
    with pytest.raises(DataError, match="'cat_b' must be a string or a list of strings"):
        load_class_texts(CLASSES, path, None)


def test_texts_file_must_be_an_object(tmp_path):
    with pytest.raises(DataError, match="must hold a JSON object"):
        load_class_texts(CLASSES, texts_file(tmp_path, ["a", "b", "c"]), None)


def test_texts_file_that_is_not_json_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "texts.json"
    path.write_text('{"cat_a": "a",\n "cat_b": }', encoding="utf-8")
    with pytest.raises(DataError, match=r"--class-texts-file .*texts\.json is not valid JSON.*line 2"):
        load_class_texts(CLASSES, path, None)


def test_missing_texts_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing.json"):
        load_class_texts(CLASSES, tmp_path / "nothing.json", None)


def test_extra_class_in_the_file_is_a_warning(tmp_path, caplog, monkeypatch):
    path = texts_file(tmp_path, {"cat_a": "a", "cat_b": "b", "股骨柄A": "c", "股骨柄Z": "z"})
    # setup_logging (run by other tests) stops propagation to the root logger: listen directly.
    logger = logging.getLogger("train_clip")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="train_clip"):
            texts = load_class_texts(CLASSES, path, None)
    finally:
        logger.removeHandler(caplog.handler)
    assert texts == [["a"], ["b"], ["c"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "股骨柄Z" in warnings[0]


