"""Class weights for imbalanced data and the weighted sampler built from them."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

WEIGHT_METHODS = ("inverse_freq", "inverse_sqrt", "balanced")


def class_weights(counts: Sequence[int], method: str, smooth_factor: float = 1.0) -> np.ndarray:
    """Per-class weights from class counts ``n_c``.

    ``inverse_freq``: 1/n_c; ``inverse_sqrt``: 1/sqrt(n_c); ``balanced``: N/(C·n_c)
    (scikit-learn's ``class_weight='balanced'``). The weights are then raised to
    ``smooth_factor``: 0 gives uniform weights, 1 the full method, values between soften it.
    Classes with no samples get weight 0 (nothing to draw).
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f"unknown weight method '{method}'; expected one of {', '.join(WEIGHT_METHODS)}")
    if smooth_factor < 0:
        raise ValueError(f"smooth_factor must be non-negative, got {smooth_factor}")
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    base = np.zeros_like(n)
    if method == "inverse_freq":
        base[present] = 1.0 / n[present]
    elif method == "inverse_sqrt":
        base[present] = 1.0 / np.sqrt(n[present])
    else:
        base[present] = n.sum() / (present.sum() * n[present])
    weights = np.zeros_like(n)
    weights[present] = base[present] ** smooth_factor
    return weights


def weighted_sampler(labels: Sequence[int], n_classes: int, method: str, smooth_factor: float,
                     generator: torch.Generator) -> WeightedRandomSampler:
    """Sampler drawing ``len(labels)`` training images per epoch, with replacement, by class weight."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes)
    per_class = class_weights(counts, method, smooth_factor)
    sample_weights = torch.as_tensor(per_class[np.asarray(labels)], dtype=torch.double)
    return WeightedRandomSampler(sample_weights, num_samples=len(labels), replacement=True,
                                 generator=generator)


class SeededSampler(Sampler):
    """Wraps a sampler to yield ``(position, augmentation_seed)`` keys.

    The seed is derived from ``(base_seed, epoch, place in the epoch)``, so augmentations are
    reproducible whatever the number of data-loader workers, and a resumed run draws the same
    ones as an uninterrupted run. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, base: Sampler, base_seed: int) -> None:
        self.base = base
        self.base_seed = base_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = np.random.SeedSequence([self.base_seed, self.epoch]).generate_state(len(self.base), dtype=np.uint64)
        for position, seed in zip(self.base, seeds):
            yield int(position), int(seed % 2**63)
