"""Device placement and mixed precision, shared by training and prediction so both score alike."""
from __future__ import annotations

import torch


def mixed_precision_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype on ``device``: None (full precision) off CUDA or when disabled.

    bfloat16 needs no loss scaling; older GPUs fall back to float16 with a GradScaler.
    """
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                          enabled=amp_dtype is not None)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an image batch; channels_last on CUDA, where convolutions run faster in that layout."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images
