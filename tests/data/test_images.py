"""Image decoding: modes, bit depths, padding to square."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import ImageCache, decode_image


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




def test_the_cache_knows_whether_a_batch_of_its_images_needs_three_channels():
    gray, colour = torch.zeros((1, 4, 4), dtype=torch.uint8), torch.zeros((3, 4, 4), dtype=torch.uint8)
    paths = [Path(f"img_{i}.png") for i in range(2)]
    assert ImageCache(paths, 4, [gray, gray]).channels() == 1
    assert ImageCache(paths, 4, [gray, colour]).channels() == 3
    assert ImageCache(paths, 4, [gray, None]).channels() == 3  # past the RAM budget: not known, so room for colour
