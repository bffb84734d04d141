"""Stratified K folds, the hold-out split and the class-size check (issue 2: folds)."""
from collections import Counter

import numpy as np
import pytest

from data.folder import DataError
from data.folds import Fold, check_class_sizes, make_folds, make_holdout_split, with_inner_split

# Imbalanced on purpose: 23 / 11 / 6 images, so stratification is visible in every fold.
LABELS = [0] * 23 + [1] * 11 + [2] * 6
CLASS_NAMES = ["cat_a", "cat_b", "股骨柄A"]


def fold_sets(folds):
    return [(tuple(f.train_idx), tuple(f.val_idx)) for f in folds]


def test_folds_are_numbered_disjoint_and_cover_every_image_once():
    folds = make_folds(LABELS, 5, random_state=0)
    assert [f.number for f in folds] == [1, 2, 3, 4, 5]
    everything = set(range(len(LABELS)))
    for fold in folds:
        assert not set(fold.train_idx) & set(fold.val_idx)
        assert set(fold.train_idx) | set(fold.val_idx) == everything
        assert len(fold.train_idx) + len(fold.val_idx) == len(LABELS)
    validated = Counter(i for fold in folds for i in fold.val_idx)
    assert sorted(validated) == sorted(everything)
    assert set(validated.values()) == {1}


@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_every_validation_fold_is_stratified(n_splits):
    folds = make_folds(LABELS, n_splits, random_state=7)
    totals = Counter(LABELS)
    for fold in folds:
        counts = Counter(LABELS[i] for i in fold.val_idx)
        for label, total in totals.items():
            expected = total / n_splits
            assert abs(counts[label] - expected) < 1, (fold.number, label, counts[label], expected)


def test_folds_are_reproducible_and_depend_on_random_state():
    assert fold_sets(make_folds(LABELS, 5, 42)) == fold_sets(make_folds(LABELS, 5, 42))
    assert fold_sets(make_folds(LABELS, 5, 42)) != fold_sets(make_folds(LABELS, 5, 43))


def test_holdout_split_is_stratified_disjoint_and_complete():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    (fold,) = make_holdout_split(labels, CLASS_NAMES, 0.2, random_state=3)
    assert fold.number == 1
    assert not set(fold.train_idx) & set(fold.val_idx)
    assert sorted(fold.train_idx + fold.val_idx) == list(range(len(labels)))
    assert len(fold.val_idx) == 20
    counts = Counter(labels[i] for i in fold.val_idx)
    for label, total in Counter(labels).items():
        assert abs(counts[label] - 0.2 * total) <= 1
    again = make_holdout_split(labels, CLASS_NAMES, 0.2, random_state=3)
    other = make_holdout_split(labels, CLASS_NAMES, 0.2, random_state=4)
    assert fold_sets(again) == fold_sets([fold])
    assert fold_sets(other) != fold_sets([fold])


def test_holdout_split_refuses_a_validation_set_too_small_for_every_class():
    with pytest.raises(DataError, match="--val-fraction 0.05"):
        make_holdout_split([0] * 20 + [1] * 10 + [2] * 10, CLASS_NAMES, 0.05, random_state=0)


def test_holdout_split_names_a_class_with_a_single_image():
    with pytest.raises(DataError, match=r"股骨柄A \(1\)") as info:
        make_holdout_split([0] * 20 + [1] * 20 + [2], CLASS_NAMES, 0.2, random_state=0)
    # Without --use-cv the user never gave --n-splits: the message must not blame it.
    assert "--n-splits" not in str(info.value)


def test_check_class_sizes_names_only_the_small_class():
    labels = [0] * 10 + [1] * 10 + [2] * 3
    with pytest.raises(DataError) as info:
        check_class_sizes(labels, CLASS_NAMES, 5)
    message = str(info.value)
    assert "股骨柄A (3)" in message
    assert "--n-splits 5" in message
    assert "cat_a" not in message and "cat_b" not in message
    check_class_sizes(labels, CLASS_NAMES, 3)  # 3 images for 3 folds is enough


def test_check_class_sizes_counts_a_class_without_images():
    with pytest.raises(DataError, match=r"cat_b \(0\)"):
        check_class_sizes(np.array([0] * 5 + [2] * 5), CLASS_NAMES, 2)


def test_the_inner_split_is_stratified_within_the_training_fold_and_keeps_patients_whole():
    groups = [f"P{p:02d}" for p in range(30) for _ in range(3)]
    labels = [int(p % 3 == 0) for p in range(30) for _ in range(3)]  # a patient's images share its class
    fold = make_folds(labels, 5, 42, groups)[0]
    inner = with_inner_split(fold, labels, ["a", "b"], 0.15, 42, groups)
    assert inner.train_idx == fold.train_idx and inner.val_idx == fold.val_idx
    assert set(inner.inner_val_idx) <= set(fold.train_idx)
    assert sorted(inner.fit_idx + inner.inner_val_idx) == fold.train_idx
    assert not {groups[i] for i in inner.fit_idx} & {groups[i] for i in inner.inner_val_idx}
    assert {labels[i] for i in inner.inner_val_idx} == {0, 1}
    assert 0.05 <= len(inner.inner_val_idx) / len(fold.train_idx) <= 0.3
    # Deterministic: every torchrun process and every --resume computes the same split.
    assert with_inner_split(fold, labels, ["a", "b"], 0.15, 42, groups) == inner
    assert with_inner_split(make_folds(labels, 5, 42, groups)[1], labels, ["a", "b"], 0.15, 42,
                            groups).inner_val_idx != inner.inner_val_idx


def test_a_small_training_fold_holds_out_one_image_per_class_and_too_small_a_fold_names_the_flag():
    labels = [0, 1, 2] * 4
    fold = Fold(1, list(range(12)), [])
    inner = with_inner_split(fold, labels, ["a", "b", "c"], 0.15, 0)
    assert sorted(labels[i] for i in inner.inner_val_idx) == [0, 1, 2]  # 15% of 12 would be 2 images
    with pytest.raises(DataError, match=r"--inner-val-fraction 0\.15: fold 1's 3 training images"):
        with_inner_split(Fold(1, [0, 1, 2], []), labels, ["a", "b", "c"], 0.15, 0)
