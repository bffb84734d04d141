"""Device placement and mixed precision, shared by training and prediction so both score alike."""
from __future__ import annotations

import logging

import torch

from utils.errors import ConfigError

log = logging.getLogger("train_clip")


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


def compile_mode(requested: str, device: torch.device) -> str | None:
    """torch.compile's ``mode`` for ``--compile-mode`` on ``device`` (None: its default). reduce-overhead
    records CUDA graphs, which need CUDA: on another device the default mode, and a warning says so."""
    if requested == "default":
        return None
    if device.type != "cuda":
        log.warning("--compile-mode %s records CUDA graphs, which need a GPU: compiling in the default mode on %s",
                    requested, device.type)
        return None
    return requested


def select_device(gpu_id: int, force_cpu: bool = False) -> torch.device:
    """``cuda:<gpu_id>``, or the CPU when CUDA is not available (or ``force_cpu``)."""
    if force_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu_id >= count:
        raise ConfigError(f"--gpu-id {gpu_id}: this machine has {count} CUDA device(s) (0..{count - 1})")
    return torch.device("cuda", gpu_id)


def describe_device(device: torch.device, amp_dtype: torch.dtype | None) -> None:
    """One log line: where training runs, and in which precision."""
    if device.type == "cpu":
        log.info("CUDA is not available: training on the CPU (mixed precision off)")
        return
    log.info("Training on %s (%s), mixed precision: %s", device, torch.cuda.get_device_name(device),
             amp_dtype or "off")
