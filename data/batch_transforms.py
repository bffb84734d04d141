"""The ``--augmentation`` levels on whole batches of uint8 images, on the training device
(``--augment-on device``; docs/design.md §16).

The data-loader workers then only index the decode-once cache and collate uint8 (:class:`ToChannels`);
:class:`BatchAugmentation` turns each batch into the model's input where the model runs. The levels
are those of :mod:`data.transforms`, with the same parameter ranges, drawn for every image of the batch
on its own:

* ``minimal`` — rotation ±5°, shift ±5 %, scale 0.95–1.05;
* ``standard`` — random resized crop (75–100 % of the area, aspect 0.9–1.1, the first of 10 draws that
  fits, else the whole image, as torchvision), horizontal flip, rotation ±10°, then brightness and
  contrast ±20 % in a random order.

The geometry of an image (crop, flip, rotation; or the affine of ``minimal``) is one affine map, so it
is resampled once, bilinearly, outside the image filled with 0 (the per-image path resizes the crop
bilinearly and rotates with the nearest pixel, rounding to uint8 after each step; the device path stays
in float). Positions are continuous, not whole pixels.

The parameters are drawn on the CPU from one ``torch.Generator`` that :meth:`BatchAugmentation.set_epoch`
seeds from (seed, epoch, process), whatever the device: the same run draws the same augmentations,
on a GPU or a CPU, and a run resumed at an epoch's start continues with the draws of an uninterrupted
one (a generator seeded again at every epoch has no state to carry in a checkpoint).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.transforms import AUGMENTATIONS, ToModelInput

# RandomResizedCrop's draws per image before it falls back to the whole image (torchvision: 10).
CROP_ATTEMPTS = 10
CROP_AREA = (0.75, 1.0)
CROP_RATIO = (0.9, 1.1)
# torchvision's rgb_to_grayscale weights: the mean that contrast blends towards.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


class ToChannels:
    """What a worker does with ``--augment-on device``: the cached uint8 image, a grayscale one
    repeated to ``channels`` (3 when the data mixes grayscale and colour, so that a batch stacks)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image if image.shape[0] == self.channels else image.expand(self.channels, -1, -1)


@dataclass
class BatchParameters:
    """Per image of a batch: the affine map from output to input coordinates (``theta``, (B, 2, 3),
    as ``F.affine_grid`` takes it, in coordinates from -1 to 1) and, for ``standard``, the
    brightness and contrast factors and whether brightness comes first (``jitter``, (B, 3))."""

    theta: torch.Tensor
    jitter: torch.Tensor | None = None

    def to(self, device: torch.device) -> "BatchParameters":
        return BatchParameters(_to_device(self.theta, device),
                               None if self.jitter is None else _to_device(self.jitter, device))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # From pinned memory the copy is queued behind the GPU's work instead of waiting for it.
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def rotations(degrees: torch.Tensor) -> torch.Tensor:
    """(B,) angles → (B, 2, 2) rotation matrices."""
    radians = torch.deg2rad(degrees)
    cos, sin = radians.cos(), radians.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def minimal_parameters(u: torch.Tensor) -> BatchParameters:
    """RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.95, 1.05)) from uniforms ``u`` (B, 4).

    Forward, an image point p goes to s·R·p + t; sampling needs the inverse, (R⁻¹/s)·(q - t).
    """
    angle, scale = uniform(u[:, 0], -5, 5), uniform(u[:, 3], 0.95, 1.05)
    shift = uniform(u[:, 1:3], -0.05, 0.05) * 2  # a fraction of the side; coordinates span 2
    linear = rotations(-angle) / scale.view(-1, 1, 1)
    offset = -(linear @ shift.unsqueeze(-1))
    return BatchParameters(torch.cat([linear, offset], dim=2))


def crop_sizes(u_area: torch.Tensor, u_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height, as fractions of the side, of RandomResizedCrop(scale=CROP_AREA, ratio=CROP_RATIO)
    from ``CROP_ATTEMPTS`` draws per image ((B, CROP_ATTEMPTS) uniforms each): the first that fits in
    the image, else the whole image (torchvision's fallback for a square image and these ratios)."""
    area = uniform(u_area, *CROP_AREA)
    aspect = torch.exp(uniform(u_ratio, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    width, height = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (width <= 1) & (height <= 1)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax: the first of equal maxima
    found = fits.any(dim=1)
    one = torch.ones_like(found, dtype=width.dtype)
    return (torch.where(found, width.gather(1, first).squeeze(1), one),
            torch.where(found, height.gather(1, first).squeeze(1), one))


STANDARD_DRAWS = 2 * CROP_ATTEMPTS + 7


def standard_parameters(u: torch.Tensor) -> BatchParameters:
    """RandomResizedCrop, RandomHorizontalFlip, RandomAffine(degrees=10) and ColorJitter(0.2, 0.2) from
    uniforms ``u`` (B, STANDARD_DRAWS). The output point q comes from the rotated, flipped crop's point
    R⁻¹q, i.e. from centre + diag(±width, height)·R⁻¹q of the image."""
    n = CROP_ATTEMPTS
    width, height = crop_sizes(u[:, :n], u[:, n:2 * n])
    left, top = u[:, 2 * n] * (1 - width), u[:, 2 * n + 1] * (1 - height)
    centre = torch.stack([2 * left + width - 1, 2 * top + height - 1], dim=1)
    flip = torch.where(u[:, 2 * n + 2] < 0.5, -1.0, 1.0).to(u.dtype)
    angle = uniform(u[:, 2 * n + 3], -10, 10)
    linear = torch.diag_embed(torch.stack([flip * width, height], dim=1)) @ rotations(-angle)
    jitter = torch.stack([uniform(u[:, 2 * n + 4], 0.8, 1.2), uniform(u[:, 2 * n + 5], 0.8, 1.2),
                          (u[:, 2 * n + 6] < 0.5).to(u.dtype)], dim=1)
    return BatchParameters(torch.cat([linear, centre.unsqueeze(-1)], dim=2), jitter)


def resample(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Float images (B, C, H, W) through their affine maps: bilinear, 0 outside the image."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gray_mean(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, 1) mean intensity of each image's grayscale version."""
    if images.shape[1] == 3:
        weights = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        images = (images * weights).sum(dim=1, keepdim=True)
    return images.mean(dim=(1, 2, 3), keepdim=True)


def color_jitter(images: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Brightness (scale) and contrast (blend with the grayscale mean) of float images in [0, 1],
    each clamped to [0, 1], in the order ``jitter[:, 2]`` says (1: brightness first), as ColorJitter."""
    brightness, contrast, brightness_first = (jitter[:, i].view(-1, 1, 1, 1).to(images.dtype) for i in range(3))

    def bright(x: torch.Tensor) -> torch.Tensor:
        return (x * brightness).clamp(0, 1)

    def contrasted(x: torch.Tensor) -> torch.Tensor:
        return (contrast * x + (1 - contrast) * gray_mean(x)).clamp(0, 1)

    return torch.where(brightness_first > 0, contrasted(bright(images)), bright(contrasted(images)))


def apply_parameters(images: torch.Tensor, params: BatchParameters) -> torch.Tensor:
    """Float images in [0, 1] (B, C, H, W), geometry then colour; the dtype and device stay."""
    out = resample(images, params.theta)
    return out if params.jitter is None else color_jitter(out, params.jitter)


class BatchAugmentation:
    """One ``--augmentation`` level on uint8 batches (B, C, H, W), on their device → the model's input
    (B, 3, H, W), normalised as :class:`data.transforms.ToModelInput`; ``none`` only normalises."""

    def __init__(self, level: str, seed: int, process: int = 0) -> None:
        if level not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation '{level}'; expected one of {', '.join(AUGMENTATIONS)}")
        self.level = level
        self.seed = seed
        self.process = process  # under torchrun each process augments its own share of a batch
        self.generator = torch.Generator()
        self.to_input = ToModelInput()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Seed the generator from (seed, epoch, process): an epoch's draws depend on nothing else."""
        entropy = np.random.SeedSequence([self.seed, epoch, self.process]).generate_state(1, dtype=np.uint64)[0]
        self.generator.manual_seed(int(entropy % 2**63))

    def draw(self, batch: int) -> BatchParameters | None:
        """The next ``batch`` images' parameters (None for ``none``), on the CPU."""
        if self.level == "none":
            return None
        if self.level == "minimal":
            return minimal_parameters(torch.rand(batch, 4, generator=self.generator, dtype=torch.float64))
        return standard_parameters(torch.rand(batch, STANDARD_DRAWS, generator=self.generator, dtype=torch.float64))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        params = self.draw(len(images))
        x = images.float().div_(255.0)
        if params is not None:
            x = apply_parameters(x, params.to(images.device))
        return self.to_input.normalise(x)
