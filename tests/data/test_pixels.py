"""data/pixels.py is the trainer's preprocessing without torch: the same pixels as data.images and the
same model input as data.transforms.ToModelInput."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.dicom import DicomOptions
from data.images import decode_image, read_and_decode
from data.pixels import decode_pixels, normalise
from data.transforms import ToModelInput
from tests.helpers import write_dicom


@pytest.mark.parametrize("channels", [1, 3])
def test_normalise_is_to_model_input_bit_for_bit(channels: int) -> None:
    image = torch.from_numpy(np.random.default_rng(channels).integers(0, 256, (channels, 9, 7), dtype=np.uint8))
    # The same float32 operations in the same order (x / 255, - mean, / std), each correctly rounded
    # by IEEE 754 on any CPU: the results are identical, not merely close.
    expected = ToModelInput()(image).numpy()
    actual = normalise(image.numpy())
    assert actual.dtype == np.float32 and actual.shape == (3, 9, 7)
    np.testing.assert_array_equal(actual, expected)


def test_decoding_gives_the_trainers_pixels_for_png_jpeg_and_dicom(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 50), dtype=np.uint8), mode="L").save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 255, (30, 24, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "c.jpg")
    write_dicom(tmp_path / "scan", rng.integers(0, 4096, (40, 30)).astype(np.uint16), bits_stored=12,
                photometric="MONOCHROME1")  # no suffix: recognised by its preamble
    window = DicomOptions("2000,1000")
    for name, dicom in [("wide.png", None), ("c.jpg", None), ("scan", window)]:
        pixels = decode_pixels(tmp_path / name, 24, dicom)
        assert pixels.flags.writeable and pixels.flags.c_contiguous
        assert torch.equal(torch.from_numpy(pixels), decode_image(tmp_path / name, 24, window))
        assert torch.equal(torch.from_numpy(pixels), read_and_decode(tmp_path / name, 24, window)[0])
    # An open file is decoded the same way as its path.
    with (tmp_path / "scan").open("rb") as handle:
        assert torch.equal(decode_image(io.BytesIO(handle.read()), 24, window), decode_image(tmp_path / "scan", 24,
                                                                                            window))


def test_images_decode_in_batches_of_the_readable_ones_in_order_and_failures_are_named():
    from data.pixels import decode_in_batches

    files = [(Path(f"{i}.png"), f"name {i}") for i in range(5)]

    def decode(path: Path) -> int | str:
        number = int(path.stem)
        return f"cannot read {path}" if number == 2 else number

    failures: list[tuple[str, str]] = []
    batches = list(decode_in_batches(files, decode, 2, failures))
    assert batches == [(["name 0", "name 1"], [0, 1]), (["name 3"], [3]), (["name 4"], [4])]
    assert failures == [("name 2", "cannot read 2.png")]
