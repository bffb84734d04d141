"""How this suite asserts that two computations are the same (tests/README.md says when to use which).

Two float32 evaluations of one formula that sum in another order (another CPU's kernels, another
batch size, padding that is masked out, two processes instead of one) agree only to float32
rounding, and how far that goes depends on the machine: a tolerance that passed on one CPU failed on
another. So:

- ``assert_same_float64``: run both sides in float64. A sum of ``terms`` products rounds by at most
  ``terms * eps`` times the sum of their magnitudes (Higham's gamma_n bound); the tolerance is that
  bound at the scale of the largest expected value, times 10 for the layers stacked on each other.
  It is still ~1e-8 relative at most, while any real difference (a token cut, another weight)
  moves the values by ~1e-3 and more.
- ``PROBABILITY_TOLERANCE``: for the probabilities that two float32 programs write to CSV files
  (the trainer's out-of-fold predictions and predict.py's), where float64 is not an option.
"""
from __future__ import annotations

import numpy as np
import torch

FLOAT64_EPS = torch.finfo(torch.float64).eps
FLOAT32_EPS = torch.finfo(torch.float32).eps


def float64_tolerance(expected: torch.Tensor, terms: int) -> float:
    """Absolute tolerance for ``expected`` computed again with sums of up to ``terms`` products."""
    assert expected.dtype == torch.float64, "compare float64 results (see this module's docstring)"
    return 10 * terms * FLOAT64_EPS * float(expected.abs().max())


def assert_same_float64(actual: torch.Tensor, expected: torch.Tensor, terms: int) -> None:
    """``actual`` and ``expected``, both float64, equal up to the rounding of sums of ``terms`` products."""
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=0, atol=float64_tolerance(expected, terms))


# A CSV stores 6 decimals: two files of the same probability differ by up to 1e-6 from writing alone.
# The float32 forwards differ in the cosine of the two unit embeddings by some float32 ulps per layer
# (1.2e-7 each); the logit scale (at most 1/0.07 = 14.3 in these tests' short runs) multiplies that,
# and a softmax passes at most half of a logit's change to a probability. A budget of 100 ulps of
# cosine gives 0.5 * 14.3 * 100 * 1.2e-7 = 8.5e-5; with the writing, 8.6e-5. What these comparisons
# exist to catch (another fold's model, other preprocessing, a missing temperature) moves
# probabilities by 1e-2 and more.
PROBABILITY_TOLERANCE = 1e-6 + 0.5 * (1 / 0.07) * 100 * FLOAT32_EPS


def assert_csv_probabilities_sum_to_one(probs: np.ndarray) -> None:
    """Rows of probabilities read back from a CSV (6 decimals) sum to 1: each value was rounded by up
    to 5e-7 when written, and the float32 softmax adds up to one ulp per class."""
    probs = np.asarray(probs, dtype=np.float64)
    classes = probs.shape[1]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=classes * (5e-7 + float(FLOAT32_EPS)))
