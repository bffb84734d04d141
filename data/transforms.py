"""Augmentations on decoded uint8 image tensors, and the normalisation every model input gets.

The three levels of ``--augmentation``:

* ``none`` — the cached image as is (padded to a square and resized once at load time).
* ``minimal`` — small random affine jitter: rotation ±5°, shift ±5 %, scale 0.95–1.05.
  Safe for any image, including ones where left/right matters.
* ``standard`` — for radiographs: random resized crop (75–100 % of the area, aspect 0.9–1.1),
  horizontal flip (left and right hips mirror each other), rotation ±10°, brightness and
  contrast ±20 %. No hue/saturation jitter: it means nothing on grayscale images.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from data.pixels import IMAGENET_MEAN, IMAGENET_STD

AUGMENTATIONS = ("none", "minimal", "standard")


def build_augmentation(level: str, img_size: int) -> v2.Transform | None:
    """The random part of the training transform for ``level`` (None for ``none``)."""
    if level == "none":
        return None
    if level == "minimal":
        return v2.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.95, 1.05))
    if level == "standard":
        return v2.Compose([
            v2.RandomResizedCrop(img_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ])
    raise ValueError(f"unknown augmentation '{level}'; expected one of {', '.join(AUGMENTATIONS)}")


class ToModelInput:
    """uint8 (..., C, H, W) with C in {1, 3} → normalised float (..., 3, H, W), on the image's device:
    one image in a data-loader worker, or a whole batch on the training device
    (:class:`data.batch_transforms.BatchAugmentation`)."""

    def __init__(self) -> None:
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        # The statistics on each device they were needed on: copying them from host memory at every
        # batch would make the host wait for the GPU.
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalise(image.float().div_(255.0))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float intensities in [0, 1] (..., C, H, W) → the model's input; grayscale gets the same
        intensity on all three channels."""
        if x.shape[-3] == 1:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        mean, std = (self.mean, self.std) if x.device.type == "cpu" else self._statistics(x.device)
        return (x - mean.to(x.dtype)) / std.to(x.dtype)

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.mean.to(device), self.std.to(device))
        return self._on_device[device]
