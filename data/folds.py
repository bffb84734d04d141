"""Train/validation splits: stratified K folds, or one stratified hold-out split.

With groups (patients), every split is made by sklearn's ``StratifiedGroupKFold``: all images of a
group land on one side, so a patient's second radiograph cannot be validated against a model that
trained on the first (docs/design.md §10).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from data.folder import DataError
from utils.logging_setup import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Fold:
    """Indices into the scanned image list; ``number`` counts from 1 as in ``fold_1/``.

    ``inner_val_idx`` (--select-on inner) is the part of ``train_idx`` held out to choose the epoch on:
    the model trains on ``fit_idx``, ``train_idx`` without it, and ``val_idx`` is only scored.
    """

    number: int
    train_idx: list[int]
    val_idx: list[int]
    inner_val_idx: list[int] = field(default_factory=list)

    @property
    def fit_idx(self) -> list[int]:
        held_out = set(self.inner_val_idx)
        return [i for i in self.train_idx if i not in held_out]


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


def check_group_sizes(labels: Sequence[int], groups: Sequence[str], class_names: Sequence[str],
                      n_splits: int) -> None:
    """A class needs groups on both sides of a split (error below two) and, for stratified folds, one
    group per fold (a warning below that: some folds then validate none of the class)."""
    per_class: dict[int, set[str]] = {k: set() for k in range(len(class_names))}
    for label, group in zip(labels, groups):
        per_class[label].add(group)
    too_few = [f"{class_names[k]} ({len(g)})" for k, g in per_class.items() if len(g) < 2]
    if too_few:
        raise DataError(f"class(es) with fewer than 2 groups (patients) cannot appear on both sides of a "
                        f"grouped split: {', '.join(too_few)}; add patients or remove the grouping")
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise DataError(f"--n-splits {n_splits}: only {n_groups} groups (patients), and a fold needs at least one; "
                        "lower --n-splits or add patients")
    few = [f"{class_names[k]} ({len(g)})" for k, g in per_class.items() if len(g) < n_splits]
    if few:
        log.warning("Class(es) with fewer groups (patients) than the %d folds: %s; some folds will validate "
                    "none of their images", n_splits, ", ".join(few))


def make_folds(labels: Sequence[int], n_splits: int, random_state: int,
               groups: Sequence[str] | None = None) -> list[Fold]:
    """Stratified K-fold split (shuffled with ``random_state``): each image is validated exactly once;
    with ``groups``, no group is on both sides of any fold."""
    y = np.asarray(labels)
    if groups is None:
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state).split(np.zeros(len(y)), y)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
        splits = splitter.split(np.zeros(len(y)), y, np.asarray(groups))
    return [Fold(number=i + 1, train_idx=sorted(train.tolist()), val_idx=sorted(val.tolist()))
            for i, (train, val) in enumerate(splits)]


def grouped_holdout(labels: Sequence[int], groups: Sequence[str], fraction: float,
                    random_state: int) -> tuple[list[int], list[int]]:
    """(kept, held out) indices, about ``fraction`` held out, whole groups on each side, stratified:
    the first fold of ``StratifiedGroupKFold`` with round(1/fraction) splits."""
    n_splits = max(2, min(round(1 / fraction), len(set(groups))))
    first = make_folds(labels, n_splits, random_state, groups)[0]
    return first.train_idx, first.val_idx


def make_holdout_split(labels: Sequence[int], class_names: Sequence[str], val_fraction: float,
                       random_state: int, groups: Sequence[str] | None = None,
                       flag: str = "--val-fraction") -> list[Fold]:
    """One stratified train/validation split (by whole groups when given), returned as a single fold;
    ``flag`` names the fraction in errors."""
    y = np.asarray(labels)
    n_classes = len(class_names)
    n_val = int(np.ceil(val_fraction * len(y)))
    if n_val < n_classes or len(y) - n_val < n_classes:
        raise DataError(f"{flag} {val_fraction}: {len(y)} images cannot give every one of the "
                        f"{n_classes} classes an image on both sides of the split")
    small = _small_classes(labels, class_names, 2)
    if small:
        raise DataError(f"{flag} {val_fraction}: class(es) with fewer than 2 images cannot appear on both sides "
                        f"of the train/validation split: {', '.join(small)}; add images")
    if groups is not None:
        check_group_sizes(labels, groups, class_names, 2)
        train, val = grouped_holdout(labels, groups, val_fraction, random_state)
        return [Fold(number=1, train_idx=train, val_idx=val)]
    train, val = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=random_state)
    return [Fold(number=1, train_idx=sorted(train.tolist()), val_idx=sorted(val.tolist()))]


def with_inner_split(fold: Fold, labels: Sequence[int], class_names: Sequence[str], fraction: float,
                     random_state: int, groups: Sequence[str] | None = None) -> Fold:
    """``fold`` with its training images split once more, by the rules of the outer split (stratified,
    whole groups), seeded by ``random_state`` and the fold number: every torchrun process and every
    resumption computes the same split. A small fold holds out at least one image per class, more than
    ``fraction`` if need be: an inner split without a class could not choose on it."""
    train = fold.train_idx
    n_val = max(int(np.ceil(fraction * len(train))), len(class_names))
    if len(train) - n_val < len(class_names):
        raise DataError(f"--inner-val-fraction {fraction}: fold {fold.number}'s {len(train)} training images cannot "
                        f"give every one of the {len(class_names)} classes an image on both sides of its inner "
                        "split; add images, lower --n-splits or choose --select-on last")
    if n_val > np.ceil(fraction * len(train)):
        # One image per class is more than ``fraction``: ask for n_val images (half an image less, so that
        # make_holdout_split's ceil cannot round n_val / len up by float error).
        fraction = (n_val - 0.5) / len(train)
    inner = make_holdout_split([labels[i] for i in train], class_names, fraction, random_state + fold.number,
                               None if groups is None else [groups[i] for i in train], "--inner-val-fraction")[0]
    return replace(fold, inner_val_idx=sorted(train[i] for i in inner.val_idx))
