"""The augmentation levels and the model input."""
import pytest
import torch

from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ToModelInput,
    build_augmentation,
)


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


def test_the_model_input_of_a_batch_is_that_of_each_image():
    for channels in (1, 3):
        images = torch.randint(0, 256, (3, channels, 4, 4), dtype=torch.uint8)
        # The same float32 operations on each image, batched or not.
        assert torch.equal(ToModelInput()(images), torch.stack([ToModelInput()(image) for image in images]))
