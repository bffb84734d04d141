"""Folder scan, class texts, image decoding and the transforms."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data.folder import IMAGE_EXTENSIONS, DataError, scan_image_folder
from data.images import decode_image
from data.texts import load_class_texts
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ToModelInput,
    build_augmentation,
)
from utils.io import write_json

CLASSES = ["cat_a", "cat_b", "股骨柄A"]


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# -- scan_image_folder --------------------------------------------------------------------------
def test_scan_finds_every_extension_case_insensitively(tmp_path):
    names = ["a.jpg", "b.jpeg", "c.png", "d.bmp", "e.tif", "f.tiff", "g.webp", "h.JPG", "i.Png", "j.TIFF",
             "k.WebP", "l.DCM"]
    for name in names:
        touch(tmp_path / "one" / name)
    touch(tmp_path / "two" / "x.png")
    found = scan_image_folder(tmp_path)
    assert sorted(p.name for p, label in zip(found.paths, found.labels) if label == 0) == sorted(names)
    assert {"." + n.rsplit(".", 1)[1].lower() for n in names} == set(IMAGE_EXTENSIONS)


def test_scan_ignores_hidden_and_non_image_files_and_includes_subfolders(tmp_path):
    keep = [tmp_path / "b" / "x.png", tmp_path / "b" / "view" / "lateral" / "y.png",
            tmp_path / "a" / "z.jpg", tmp_path / "b" / "scan.dcm"]
    skip = [tmp_path / "b" / ".hidden.png", tmp_path / "b" / ".thumbs" / "t.png",
            tmp_path / "b" / "sub" / ".cache" / "c.png", tmp_path / "b" / "notes.txt",
            tmp_path / "b" / "Thumbs.db", tmp_path / "b" / "png",
            tmp_path / ".git" / "objects" / "o.png", tmp_path / "loose.png"]
    for path in keep + skip:
        touch(path)
    # A PACS export without suffix is found by its DICOM preamble (128 bytes, then DICM).
    pacs_export = tmp_path / "b" / "IM000001"
    pacs_export.write_bytes(bytes(128) + b"DICM" + bytes(16))
    keep.append(pacs_export)
    found = scan_image_folder(tmp_path)
    assert found.class_names == ["a", "b"]
    assert sorted(found.paths) == sorted(keep)
    assert found.labels == [0, 1, 1, 1, 1]
    assert found.class_counts() == [1, 4]


def test_scan_sorts_classes_and_keeps_utf8_names(tmp_path):
    for name in ["股骨柄B", "zeta", "股骨柄A", "Alpha", "beta"]:
        touch(tmp_path / name / "img.png")
    found = scan_image_folder(tmp_path)
    assert found.class_names == ["Alpha", "beta", "zeta", "股骨柄A", "股骨柄B"]
    for path, label in zip(found.paths, found.labels):
        assert path.parent.name == found.class_names[label]


def test_scan_sorts_images_within_a_class(tmp_path):
    for name in ["c.png", "a.png", "b.png"]:
        touch(tmp_path / "k" / name)
    touch(tmp_path / "m" / "x.png")
    assert [p.name for p in scan_image_folder(tmp_path).paths] == ["a.png", "b.png", "c.png", "x.png"]


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(tmp_path / "nowhere")


def test_data_dir_that_is_a_file(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(touch(tmp_path / "data.zip"))


def test_empty_data_dir(tmp_path):
    touch(tmp_path / "readme.txt")
    with pytest.raises(DataError, match="no class folders"):
        scan_image_folder(tmp_path)


def test_single_class_is_an_error_naming_it(tmp_path):
    touch(tmp_path / "股骨柄A" / "x.png")
    with pytest.raises(DataError, match="only one class.*股骨柄A"):
        scan_image_folder(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    touch(tmp_path / "a" / "x.png")
    touch(tmp_path / "空类" / "notes.txt")
    touch(tmp_path / "空类" / ".hidden.png")
    with pytest.raises(DataError, match="no image: 空类"):
        scan_image_folder(tmp_path)


# -- load_class_texts ---------------------------------------------------------------------------
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


# -- decode_image -------------------------------------------------------------------------------
def save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def test_grayscale_gives_one_channel(tmp_path):
    pixels = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    out = decode_image(save(tmp_path, "g.png", Image.fromarray(pixels, mode="L")), 16)
    assert out.shape == (1, 16, 16) and out.dtype == torch.uint8
    assert torch.equal(out[0], torch.from_numpy(pixels))  # same size: no resampling


def test_16_bit_grayscale_is_stretched_to_8_bit(tmp_path):
    pixels = np.full((16, 16), 1000, dtype=np.uint16)
    pixels[:, 8:] = 3000
    image = Image.fromarray(pixels)
    assert image.mode.startswith("I;16")
    out = decode_image(save(tmp_path, "g16.png", image), 16)
    assert out.shape == (1, 16, 16)
    assert out[0, :, :8].max() == 0 and out[0, :, 8:].min() == 255


def test_32_bit_integer_grayscale(tmp_path):
    pixels = np.zeros((16, 16), dtype=np.int32)
    pixels[:8] = 70000
    out = decode_image(save(tmp_path, "i.tif", Image.fromarray(pixels, mode="I")), 16)
    assert out.shape == (1, 16, 16) and out[0, 0, 0] == 255 and out[0, -1, 0] == 0


def test_rgb_gives_three_channels(tmp_path):
    image = Image.new("RGB", (16, 16), (200, 10, 90))
    out = decode_image(save(tmp_path, "c.png", image), 16)
    assert out.shape == (3, 16, 16)
    assert out[:, 5, 5].tolist() == [200, 10, 90]


def test_rgba_is_composited_on_black(tmp_path):
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[..., 0] = 255
    pixels[:, 8:, 3] = 255  # right half opaque red, left half fully transparent red
    out = decode_image(save(tmp_path, "a.png", Image.fromarray(pixels, mode="RGBA")), 16)
    assert out.shape == (3, 16, 16)
    assert out[:, 4, 2].tolist() == [0, 0, 0]
    assert out[:, 4, 12].tolist() == [255, 0, 0]


def test_palette_image_gives_three_channels(tmp_path):
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    out = decode_image(save(tmp_path, "p.png", image), 16)
    assert out.shape == (3, 16, 16) and out[:, 3, 3].tolist() == [10, 200, 30]


@pytest.mark.parametrize("size", [(40, 20), (20, 40)])
def test_aspect_ratio_is_kept_by_padding(tmp_path, size):
    # A white 2:1 image scaled into a 32x32 square: the long side fills it, the short side
    # becomes 16 pixels centred between two black bands of 8.
    out = decode_image(save(tmp_path, "wide.png", Image.new("L", size, 255)), 32)[0]
    if size[0] < size[1]:
        out = out.t()
    assert out.shape == (32, 32)
    assert out[:8].max() == 0 and out[24:].max() == 0
    assert out[9:23].min() > 200


def test_large_image_is_shrunk_to_the_requested_size(tmp_path):
    out = decode_image(save(tmp_path, "big.jpg", Image.new("RGB", (300, 200), (90, 90, 90))), 24)
    assert out.shape == (3, 24, 24)


# -- transforms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("level", ["none", "minimal", "standard"])
def test_each_augmentation_keeps_shape_and_dtype(level, channels):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (channels, 32, 32), dtype=torch.uint8)
    augment = build_augmentation(level, 32)
    assert (augment is None) == (level == "none")
    out = image if augment is None else augment(image)
    assert out.shape == image.shape and out.dtype == torch.uint8


def test_standard_augmentation_changes_the_image():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
    augment = build_augmentation("standard", 32)
    assert any(not torch.equal(augment(image), image) for _ in range(5))


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="none, minimal, standard"):
        build_augmentation("strong", 32)


def test_to_model_input_gives_three_normalised_channels():
    gray = torch.tensor([[[0, 255]]], dtype=torch.uint8)  # (1, 1, 2)
    out = ToModelInput()(gray)
    assert out.shape == (3, 1, 2) and out.dtype == torch.float32
    for c in range(3):
        assert out[c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], abs=1e-6)
        assert out[c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)
    colour = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    colour[1] = 0
    out = ToModelInput()(colour)
    assert out.shape == (3, 4, 4)
    assert out[1, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[1] / IMAGENET_STD[1], abs=1e-6)
    assert out[0, 0, 0].item() == pytest.approx((128 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=1e-6)


def test_to_model_input_leaves_the_cached_image_untouched():
    image = torch.full((1, 4, 4), 100, dtype=torch.uint8)
    ToModelInput()(image)
    assert image.dtype == torch.uint8 and int(image[0, 0, 0]) == 100
