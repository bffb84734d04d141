"""Train/validation splits: stratified K folds, or one stratified hold-out split."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from data.folder import DataError


@dataclass(frozen=True)
class Fold:
    """Indices into the scanned image list; ``number`` counts from 1 as in ``fold_1/``."""

    number: int
    train_idx: list[int]
    val_idx: list[int]


def _small_classes(labels: Sequence[int], class_names: Sequence[str], minimum: int) -> list[str]:
    """``name (count)`` of each class with fewer than ``minimum`` images."""
    counts = Counter(labels)
    return [f"{class_names[k]} ({counts[k]})" for k in range(len(class_names)) if counts[k] < minimum]


def check_class_sizes(labels: Sequence[int], class_names: Sequence[str], n_splits: int) -> None:
    """Every class needs at least one image per fold, or stratification is impossible."""
    small = _small_classes(labels, class_names, n_splits)
    if small:
        raise DataError(f"--n-splits {n_splits}: class(es) with fewer images than folds: {', '.join(small)}; "
                        "add images or lower --n-splits")


def make_folds(labels: Sequence[int], n_splits: int, random_state: int) -> list[Fold]:
    """Stratified K-fold split (shuffled with ``random_state``): each image is validated exactly once."""
    y = np.asarray(labels)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return [Fold(number=i + 1, train_idx=sorted(train.tolist()), val_idx=sorted(val.tolist()))
            for i, (train, val) in enumerate(splitter.split(np.zeros(len(y)), y))]


def make_holdout_split(labels: Sequence[int], class_names: Sequence[str], val_fraction: float,
                       random_state: int) -> list[Fold]:
    """One stratified train/validation split, returned as a single fold."""
    y = np.asarray(labels)
    n_classes = len(class_names)
    n_val = int(np.ceil(val_fraction * len(y)))
    if n_val < n_classes or len(y) - n_val < n_classes:
        raise DataError(f"--val-fraction {val_fraction}: {len(y)} images cannot give every one of the "
                        f"{n_classes} classes an image on both sides of the split")
    small = _small_classes(labels, class_names, 2)
    if small:
        raise DataError(f"class(es) with fewer than 2 images cannot appear on both sides of the "
                        f"train/validation split: {', '.join(small)}; add images")
    train, val = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=random_state)
    return [Fold(number=1, train_idx=sorted(train.tolist()), val_idx=sorted(val.tolist()))]
