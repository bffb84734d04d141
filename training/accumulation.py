"""Gradient accumulation (``--accum-steps K``) that is exactly one step of the whole batch.

The loss is not a sum over images: its class→image half is a softmax over all the batch's images
(docs/design.md §4), so K micro-batches each with its own loss would optimise another objective.
Instead (as GradCache, Gao et al. 2021, and open_clip's ``--accum-freq``): the K micro-batches' image
embeddings are first computed without a graph; the loss of the whole batch is taken on them, which
gives the gradient of every embedding and, through the class embeddings and the scale, of the text
side (once, as in one step); then each micro-batch runs again with a graph and back-propagates its
rows' gradient. Activation memory is that of B/K images; the image tower runs twice.
"""
from __future__ import annotations

import torch

from models.clip_model import CLIPClassifier
from models.loss import class_contrastive_loss
from utils.device import autocast, to_device


def accumulate_gradients(model: CLIPClassifier, images: torch.Tensor, labels: torch.Tensor, steps: int,
                         device: torch.device, amp_dtype: torch.dtype | None, symmetric: bool,
                         scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Add to the parameters' ``.grad`` the (scaled) gradient of the loss of the whole batch ``images``,
    run as ``steps`` micro-batches; return that loss.

    The first pass must leave no trace: BatchNorm running statistics are put back (each micro-batch
    updates them once, in the second pass) and each micro-batch's second pass replays the RNG state
    of its first, so dropout draws the same masks and the embeddings are the ones the loss saw.
    BatchNorm normalises each micro-batch by its own statistics, as a torchrun process does its share.
    """
    chunks = images.chunk(steps)
    buffers = [buffer.clone() for buffer in model.image_encoder.buffers()]
    states, embeddings = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            with autocast(device, amp_dtype):
                embeddings.append(model.encode_images(to_device(chunk, device)))
    for buffer, saved in zip(model.image_encoder.buffers(), buffers):
        buffer.copy_(saved)
    cached = torch.cat(embeddings).requires_grad_()
    with autocast(device, amp_dtype):
        class_emb, scale = model.encode_classes(), model.scale()
    loss = class_contrastive_loss(cached, class_emb, labels, scale, symmetric=symmetric)
    scaler.scale(loss).backward()
    for chunk, state, grad in zip(chunks, states, cached.grad.split([len(c) for c in chunks])):
        _set_rng_state(state, device)
        with autocast(device, amp_dtype):
            embedding = model.encode_images(to_device(chunk, device))
        embedding.backward(grad.to(embedding.dtype))
    return loss.detach()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
