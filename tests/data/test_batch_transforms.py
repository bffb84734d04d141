"""The augmentation levels on whole batches (--augment-on device), run here on the CPU: shapes, types
and ranges, reproducibility for a seed, parameters of their own per image, the geometry and colour
steps against their definitions (torchvision's functional ops), ``none`` = the per-image model input."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from data.batch_transforms import (CROP_ATTEMPTS, STANDARD_DRAWS, BatchAugmentation, BatchParameters, ToChannels,
                                   apply_parameters, color_jitter, crop_sizes, minimal_parameters, rotations,
                                   standard_parameters)
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToModelInput
from tests.equivalence import FLOAT32_EPS, assert_same_float64


def uint8_batch(batch: int, channels: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def identity(batch: int) -> torch.Tensor:
    return torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64).expand(batch, 2, 3).clone()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("level", ["none", "minimal", "standard"])
def test_each_level_gives_the_model_input_shape_type_and_range(level, channels):
    images = uint8_batch(6, channels)
    cached = images.clone()
    out = BatchAugmentation(level, seed=1)(images)
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32 and out.device == images.device
    # Every value is a normalised intensity in [0, 1] (fill, clamping and bilinear blends stay inside).
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    intensity = out * std + mean
    slack = 8 * FLOAT32_EPS  # float32 rounding of the normalisation and its inverse, at magnitudes below 3
    assert intensity.min() >= -slack and intensity.max() <= 1 + slack
    assert torch.equal(images, cached)  # the cached images are not changed in place


def test_none_is_the_per_image_model_input():
    for channels in (1, 3):
        images = uint8_batch(4, channels)
        expected = torch.stack([ToModelInput()(image) for image in images])
        # The same float32 operations, image by image or batched.
        assert torch.equal(BatchAugmentation("none", seed=3)(images), expected)


@pytest.mark.parametrize("level", ["minimal", "standard"])
def test_a_seed_and_an_epoch_give_the_same_draws_and_another_epoch_others(level):
    images = uint8_batch(8, 1)
    first, again = BatchAugmentation(level, seed=5), BatchAugmentation(level, seed=5)
    for augment in (first, again):
        augment.set_epoch(3)
    epoch_3 = [first(images), first(images)]
    assert all(torch.equal(a, b) for a, b in zip(epoch_3, [again(images), again(images)]))
    assert not torch.equal(epoch_3[0], epoch_3[1])  # the second batch draws its own parameters
    first.set_epoch(4)
    assert not torch.equal(first(images), epoch_3[0])
    first.set_epoch(3)  # what a run resumed at epoch 3 does: the draws of the uninterrupted run
    assert torch.equal(first(images), epoch_3[0])
    epoch_0 = BatchAugmentation(level, seed=5)(images)
    assert not torch.equal(BatchAugmentation(level, seed=6)(images), epoch_0)  # another seed (fold)
    assert not torch.equal(BatchAugmentation(level, seed=5, process=1)(images), epoch_0)  # another torchrun rank


@pytest.mark.parametrize("level", ["minimal", "standard"])
def test_every_image_of_a_batch_gets_its_own_parameters(level):
    images = uint8_batch(1, 1).expand(8, -1, -1, -1)  # one image, eight times
    out = BatchAugmentation(level, seed=0)(images)
    assert all(not torch.equal(out[i], out[j]) for i in range(8) for j in range(i + 1, 8))


def decompose(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row lengths, the angle and the offset of affine maps ``diag(d) @ R(-angle) | offset``."""
    linear = theta[:, :, :2]
    lengths = linear.norm(dim=2)
    angle = torch.rad2deg(torch.atan2(-linear[:, 1, 0], linear[:, 1, 1]))
    return lengths, angle, theta[:, :, 2]


def test_standard_parameters_stay_in_their_ranges_and_use_both_sides_of_each_coin():
    params = standard_parameters(torch.rand(4000, STANDARD_DRAWS, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64))
    lengths, angle, centre = decompose(params.theta)
    width, height = lengths.unbind(1)
    rounding = 1e-12  # float64 sums of a few terms of size at most 1
    assert ((width * height >= 0.75 - rounding) & (width * height <= 1 + rounding)).all()
    assert ((width / height >= 0.9 - rounding) & (width / height <= 1.1 + rounding)).all()
    assert (centre.abs() + torch.stack([width, height], 1) <= 1 + rounding).all()  # the crop lies in the image
    assert (angle.abs() <= 10 + rounding).all() and angle.min() < -9 and angle.max() > 9
    flipped = params.theta[:, 0, 0] * torch.cos(torch.deg2rad(angle)) < 0
    assert 0.45 < flipped.double().mean() < 0.55
    brightness, contrast, brightness_first = params.jitter.unbind(1)
    for factor in (brightness, contrast):
        assert ((factor >= 0.8) & (factor <= 1.2)).all() and factor.min() < 0.81 and factor.max() > 1.19
    assert set(brightness_first.tolist()) == {0.0, 1.0}


def test_minimal_parameters_stay_in_their_ranges():
    params = minimal_parameters(torch.rand(4000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    lengths, angle, offset = decompose(params.theta)
    rounding = 1e-12
    assert torch.allclose(lengths[:, 0], lengths[:, 1], rtol=0, atol=rounding)  # one scale, no flip
    scale = 1 / lengths[:, 0]
    assert ((scale >= 0.95 - rounding) & (scale <= 1.05 + rounding)).all()
    assert (angle.abs() <= 5 + rounding).all() and angle.abs().max() > 4.9
    shift = -(torch.linalg.inv(params.theta[:, :, :2]) @ offset.unsqueeze(-1)).squeeze(-1)  # the forward shift
    assert (shift.abs() <= 0.1 + rounding).all() and shift.abs().max() > 0.099  # 5 % of a side spanning 2
    assert params.jitter is None


def test_the_crop_is_the_first_draw_that_fits_and_else_the_whole_image():
    too_wide = torch.ones(1, CROP_ATTEMPTS, dtype=torch.float64)  # area 1 at aspect 1.1: wider than the image
    width, height = crop_sizes(too_wide, too_wide)
    assert width.item() == 1 and height.item() == 1
    # Three draws of the whole area at aspect 1.1 do not fit; the fourth (aspect ~1) is taken.
    area = torch.linspace(0.2, 0.6, CROP_ATTEMPTS, dtype=torch.float64).unsqueeze(0)
    area[0, :3] = 1
    ratio = torch.full((1, CROP_ATTEMPTS), 0.5, dtype=torch.float64)
    ratio[0, :3] = 1
    width, height = crop_sizes(area, ratio)
    expected_area = 0.75 + 0.25 * area[0, 3].item()
    aspect = math.sqrt(0.9 * 1.1)  # the log-uniform draw's middle
    assert math.isclose(width.item(), math.sqrt(expected_area * aspect), rel_tol=1e-12)
    assert math.isclose(height.item(), math.sqrt(expected_area / aspect), rel_tol=1e-12)


def test_the_geometry_is_the_affine_it_describes():
    images = uint8_batch(3, 3, size=8).double() / 255
    same = apply_parameters(images, BatchParameters(identity(3)))
    assert_same_float64(same, images, terms=4)  # bilinear weights of 1 and 0 at the pixel centres
    flip = identity(3)
    flip[:, 0, 0] = -1
    assert_same_float64(apply_parameters(images, BatchParameters(flip)), images.flip(-1), terms=4)
    quarter = torch.cat([rotations(torch.full((3,), 90.0, dtype=torch.float64)),
                         torch.zeros(3, 2, 1, dtype=torch.float64)], dim=2)
    assert_same_float64(apply_parameters(images, BatchParameters(quarter)), images.rot90(1, dims=(-2, -1)), terms=4)


def test_a_crop_is_resized_as_torchvision_resizes_it_away_from_the_image_border():
    images = uint8_batch(1, 1, size=16).double() / 255
    crop = identity(1) * 0.5  # the centre 8 x 8 pixels, enlarged to 16 x 16
    expected = TF.resize(images[..., 4:12, 4:12], [16, 16], antialias=False)  # bilinear, half-pixel centres
    out = apply_parameters(images, BatchParameters(crop))
    # torchvision repeats the crop's edge pixels; the resampling reads the image's pixels beyond it.
    assert_same_float64(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], terms=4)
    assert not torch.allclose(out[..., 0, :], expected[..., 0, :])


def test_colour_jitter_is_torchvision_brightness_and_contrast_in_the_drawn_order():
    images = uint8_batch(2, 3, size=8).double() / 255
    factors = torch.tensor([[1.15, 0.85, 1.0], [0.9, 1.2, 0.0]], dtype=torch.float64)
    out = color_jitter(images, factors)
    brightness_first = TF.adjust_contrast(TF.adjust_brightness(images[0], 1.15), 0.85)
    contrast_first = TF.adjust_brightness(TF.adjust_contrast(images[1], 1.2), 0.9)
    # The widest sum: the grayscale mean over the 64 pixels.
    assert_same_float64(out[0], brightness_first, terms=64)
    assert_same_float64(out[1], contrast_first, terms=64)
    gray = images[:, :1]
    out = color_jitter(gray, factors)
    assert_same_float64(out[1], TF.adjust_brightness(TF.adjust_contrast(gray[1], 1.2), 0.9), terms=64)


def test_to_channels_repeats_grayscale_only_where_the_batch_needs_colour():
    gray = torch.full((1, 4, 4), 7, dtype=torch.uint8)
    colour = torch.zeros((3, 4, 4), dtype=torch.uint8)
    assert ToChannels(1)(gray) is gray and ToChannels(3)(colour) is colour
    assert ToChannels(3)(gray).shape == (3, 4, 4) and torch.equal(ToChannels(3)(gray)[2], gray[0])


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="none, minimal, standard"):
        BatchAugmentation("strong", seed=0)

