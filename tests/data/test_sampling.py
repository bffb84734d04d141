"""Class weights per method and smoothing, and the weighted sampler of the training folds."""
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import training.fold
from data.folder import ImageFolder
from data.folds import Fold
from data.images import ImageCache
from data.sampling import class_weights, weighted_sampler
from training.config import TrainConfig
from training.distributed import Distributed

COUNTS = [10, 40, 50]  # N = 100, C = 3


@pytest.mark.parametrize("method, expected", [
    ("inverse_freq", [1 / 10, 1 / 40, 1 / 50]),
    ("inverse_sqrt", [1 / math.sqrt(10), 1 / math.sqrt(40), 1 / math.sqrt(50)]),
    ("balanced", [100 / (3 * 10), 100 / (3 * 40), 100 / (3 * 50)]),
])
def test_class_weights_match_hand_computed_values(method, expected):
    np.testing.assert_allclose(class_weights(COUNTS, method), expected, rtol=1e-12)


@pytest.mark.parametrize("method", ["inverse_freq", "inverse_sqrt", "balanced"])
def test_smoothing_interpolates_between_uniform_and_full(method):
    full = class_weights(COUNTS, method, 1.0)
    np.testing.assert_allclose(class_weights(COUNTS, method, 0.0), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(class_weights(COUNTS, method, 0.5), np.sqrt(full), rtol=1e-12)
    # The rarest class always gets the largest weight once smoothing is above 0.
    assert class_weights(COUNTS, method, 0.5).argmax() == 0


def test_balanced_weights_give_each_class_the_same_total_mass():
    weights = class_weights(COUNTS, "balanced")
    np.testing.assert_allclose(weights * np.array(COUNTS), [100 / 3] * 3)


def test_a_class_without_samples_gets_weight_zero():
    weights = class_weights([10, 0, 5], "balanced")
    assert weights[1] == 0
    # Balanced divides by the number of classes present: 15 / (2 * 10) and 15 / (2 * 5).
    np.testing.assert_allclose(weights[[0, 2]], [0.75, 1.5])


def test_bad_method_or_negative_smoothing_is_refused():
    with pytest.raises(ValueError, match="inverse_freq"):
        class_weights(COUNTS, "inverse")
    with pytest.raises(ValueError, match="non-negative"):
        class_weights(COUNTS, "inverse_freq", -0.5)


def draw_classes(labels, method, smooth, seed=0):
    sampler = weighted_sampler(labels, 3, method, smooth, torch.Generator().manual_seed(seed))
    drawn = list(sampler)
    assert len(drawn) == len(labels)
    return Counter(labels[i] for i in drawn)


@pytest.mark.parametrize("method", ["inverse_freq", "balanced"])
def test_weighted_sampler_draws_imbalanced_classes_about_equally(method):
    labels = [0] * 900 + [1] * 90 + [2] * 10
    counts = draw_classes(labels, method, 1.0)
    # Each class expects 1000/3 ≈ 333 draws (std ≈ 15); 80 is more than 5 std.
    for label in range(3):
        assert abs(counts[label] - 1000 / 3) < 80, counts


def test_weighted_sampler_without_smoothing_keeps_the_data_proportions():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    counts = draw_classes(labels, "inverse_freq", 0.0)
    assert counts[0] > 850 and counts[2] < 30


def test_weighted_sampler_is_reproducible_with_the_same_generator_seed():
    labels = [0] * 30 + [1] * 5 + [2] * 5
    first = list(weighted_sampler(labels, 3, "inverse_freq", 1.0, torch.Generator().manual_seed(1)))
    second = list(weighted_sampler(labels, 3, "inverse_freq", 1.0, torch.Generator().manual_seed(1)))
    assert first == second


def fake_run(labels, cfg):
    """Just what training.fold.make_loaders reads: the data, the config and the device."""
    cache = ImageCache([Path(f"img_{i}.png") for i in range(len(labels))], 16,
                       [torch.zeros(1, 16, 16, dtype=torch.uint8) for _ in labels])
    images = ImageFolder(Path("."), ["a", "b"], list(cache.paths), list(labels))
    return SimpleNamespace(cfg=cfg, cache=cache, labels=list(labels), images=images,
                           device=torch.device("cpu"), processes=Distributed())


def test_make_loaders_weights_the_training_fold_only():
    # Balanced overall (10/10), but the training fold holds 8 of class 0 and 2 of class 1:
    # weights from all labels would be equal; from the fold's own labels they are 1/8 and 1/2.
    labels = [0] * 10 + [1] * 10
    fold = Fold(1, train_idx=list(range(8)) + [10, 11], val_idx=[8, 9] + list(range(12, 20)))
    cfg = TrainConfig(data_dir="unused", use_weighted_sampling=True, weight_method="inverse_freq",
                      batch_size=4, num_workers=0, img_size=16, augmentation="none")
    train_loader, val_loader, inner_loader, seeded = training.fold.make_loaders(fake_run(labels, cfg), fold,
                                                                             torch.Generator().manual_seed(0))
    assert inner_loader is None  # no inner split in this fold
    assert train_loader.sampler is seeded  # yields (position, augmentation seed) keys
    sampler = seeded.base
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    assert sampler.num_samples == len(fold.train_idx)
    np.testing.assert_allclose(sampler.weights.numpy(), [1 / 8] * 8 + [1 / 2] * 2)
    # The sampler's positions address the training set, whose items are training images only.
    seen = {int(index) for _, _, indices in train_loader for index in indices}
    assert seen <= set(fold.train_idx)
    assert [int(i) for _, _, batch in val_loader for i in batch] == fold.val_idx


def test_make_loaders_without_weighted_sampling_shuffles_uniformly():
    labels = [0] * 10 + [1] * 10
    fold = Fold(1, train_idx=list(range(0, 20, 2)), val_idx=list(range(1, 20, 2)))
    cfg = TrainConfig(data_dir="unused", batch_size=4, num_workers=0, img_size=16, augmentation="none")
    _, _, _, seeded = training.fold.make_loaders(fake_run(labels, cfg), fold, torch.Generator().manual_seed(0))
    assert isinstance(seeded.base, torch.utils.data.RandomSampler)


def test_the_model_trains_on_the_training_fold_less_its_inner_split_which_is_scored_in_order():
    labels = [0] * 10 + [1] * 10
    fold = Fold(1, train_idx=list(range(0, 20, 2)), val_idx=list(range(1, 20, 2)), inner_val_idx=[4, 14])
    cfg = TrainConfig(data_dir="unused", batch_size=4, num_workers=0, img_size=16, augmentation="none")
    train_loader, _, inner_loader, seeded = training.fold.make_loaders(fake_run(labels, cfg), fold,
                                                                       torch.Generator().manual_seed(0))
    assert len(seeded.base) == len(fold.train_idx) - 2
    seen = {int(index) for _, _, indices in train_loader for index in indices}
    assert seen <= set(fold.train_idx) - {4, 14}
    assert [int(i) for _, _, batch in inner_loader for i in batch] == [4, 14]
