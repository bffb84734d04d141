"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks").

One positive number T divides a model's logits before the softmax: T > 1 softens an over-confident
model, T < 1 sharpens a timid one, and the argmax, so every prediction, is unchanged. T is fitted by
minimising the negative log-likelihood of labelled images the scored images never joined (the inner
validation split, --select-on inner).

The trainer keeps probabilities, not logits: ``log p`` is the logits less their log-sum-exp, a
constant per image that the softmax removes, so ``softmax(log p / T)`` equals ``softmax(logits / T)``.
A probability that underflowed to 0 in float32 is clipped to float32's smallest normal number first.
"""
from __future__ import annotations

import numpy as np
import torch

TINY = float(np.finfo(np.float32).tiny)


def _log_probs(probs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY, None)))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, max_iter: int = 100) -> float:
    """The temperature minimising the mean negative log-likelihood of ``y_true`` (LBFGS, float64).

    It is optimised as log T, so T stays positive without a constraint.
    """
    log_probs = _log_probs(probs)
    labels = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_probs / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` as the softmax of their logits divided by ``temperature`` (float64); 1 returns them as given."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    return (_log_probs(probs) / temperature).softmax(dim=1).numpy()
