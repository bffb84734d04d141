"""Near-duplicate images on both sides of a fold: the leakage that grouping by patient prevents.

Two radiographs of one patient taken minutes apart look alike; if one trains and the other
validates, the fold's score is inflated. Perceptual hashes (``imagehash.phash``, computed once in
the decode pass) differ in few bits for such pairs, so comparing them across each fold's training
and validation sides is cheap: bit counts of XORs, one block of validation images at a time.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data.folds import Fold

# Out of 64 bits: unrelated images differ in about 32 (rarely under 20), copies with a little noise
# in a few; 10 is the usual cut-off for "the same picture" with phash.
NEAR_DUPLICATE_BITS = 10
BLOCK = 512  # validation images compared at once: BLOCK x n_train distances in memory


@dataclass(frozen=True)
class NearDuplicate:
    """Images ``first`` and ``second`` (indices, first < second) on opposite sides of ``folds``."""

    first: int
    second: int
    distance: int
    folds: tuple[int, ...]


def near_duplicates_across_folds(phashes: Sequence[int], hashes: Sequence[str], folds: Sequence[Fold],
                                 max_distance: int = NEAR_DUPLICATE_BITS) -> list[NearDuplicate]:
    """Pairs of images within ``max_distance`` bits of each other, one training and one validating
    in some fold; byte-identical pairs are left out (they have a warning of their own)."""
    codes = np.asarray(phashes, dtype=np.uint64)
    found: dict[tuple[int, int], tuple[int, set[int]]] = defaultdict(lambda: (64, set()))
    for fold in folds:
        train = np.asarray(fold.train_idx, dtype=np.int64)
        for start in range(0, len(fold.val_idx), BLOCK):
            val = np.asarray(fold.val_idx[start:start + BLOCK], dtype=np.int64)
            distances = np.bitwise_count(codes[val][:, None] ^ codes[train][None, :])
            for row, column in zip(*np.nonzero(distances <= max_distance)):
                i, j = int(val[row]), int(train[column])
                if hashes[i] == hashes[j]:
                    continue
                pair = (min(i, j), max(i, j))
                distance, fold_numbers = found[pair]
                fold_numbers.add(fold.number)
                found[pair] = (min(distance, int(distances[row, column])), fold_numbers)
    return [NearDuplicate(i, j, distance, tuple(sorted(numbers)))
            for (i, j), (distance, numbers) in sorted(found.items())]
