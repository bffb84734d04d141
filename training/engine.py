"""The training engine: one epoch, evaluation, optimiser groups, the LR schedule, the memory probe.

Pure functions of a model, a loader and an optimiser (as open_clip's ``train_one_epoch``): they know
nothing of folds, files or the command line.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.clip_model import CLIPClassifier
from models.loss import class_contrastive_loss
from training.accumulation import accumulate_gradients
from training.config import TrainConfig
from training.distributed import Distributed
from training.ensemble import FoldModel, image_logits
from training.layers import decay_multipliers
from utils.device import autocast, to_device
from utils.errors import UserError


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


# Steps between two checks of the training loss for NaN/inf (each check waits for the GPU).
FINITE_CHECK_STEPS = 50


def train_one_epoch(model: CLIPClassifier, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    device: torch.device, amp_dtype: torch.dtype | None, symmetric: bool,
                    epoch: int, description: str = "", processes: Distributed = Distributed(),
                    accum_steps: int = 1, after_step: Callable[[], None] | None = None,
                    augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss, the last learning rate, AMP-skipped steps and
    the seconds the pass took (data loading included: the training throughput without validation).
    ``augment`` (``--augment-on device``) turns each uint8 batch into the model's input on ``device``.

    Under torchrun ``model`` is wrapped in DistributedDataParallel and ``loader`` yields this
    process's share of each step: the loss is that of the whole step's batch (gathered), as in one
    process, and so are the statistics returned.
    """
    model.train()
    started = time.perf_counter()
    losses: list[torch.Tensor] = []  # per step, on the device: reading each one would wait for the GPU
    count, skipped = 0, 0
    bars = None if processes.is_main else True  # None: a bar on a terminal only; one bar per run
    for step, (images, labels, _) in enumerate(tqdm(loader, desc=description, leave=False, disable=bars), 1):
        # A new step: CUDA graphs (--compile-mode reduce-overhead) may reuse the memory of the last
        # step's outputs, all of them consumed by now; without CUDA graphs this only counts.
        torch.compiler.cudagraph_mark_step_begin()
        labels = labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        if accum_steps > 1:  # one process: torchrun and --accum-steps exclude each other (Distributed.check_config)
            loss = accumulate_gradients(model, images, labels, accum_steps, device, amp_dtype, symmetric, scaler)
        else:
            with autocast(device, amp_dtype):
                image_emb, class_emb, scale = model(to_device(images, device))
            if processes.enabled:
                image_emb, labels = processes.gather_embeddings(image_emb), processes.gather_labels(labels)
            loss = class_contrastive_loss(image_emb, class_emb, labels, scale, symmetric=symmetric)
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scale_before is not None and scaler.get_scale() < scale_before:
            skipped += 1  # the scaler found inf/NaN gradients and skipped this step
        scheduler.step()
        if after_step is not None:
            after_step()  # e.g. the weights' moving average (--ema-decay)
        losses.append(loss.detach() * len(labels))
        count += len(labels)
        if step % FINITE_CHECK_STEPS == 0:
            raise_if_not_finite(losses, step - FINITE_CHECK_STEPS, epoch)
    raise_if_not_finite(losses, len(losses) - len(losses) % FINITE_CHECK_STEPS, epoch)
    total = torch.stack(losses).sum().item() if losses else 0.0
    return {"train_loss": total / max(count, 1), "lr": optimizer.param_groups[0]["lr"],
            "amp_skipped_steps": skipped, "train_seconds": round(time.perf_counter() - started, 3)}


def raise_if_not_finite(step_losses: list[torch.Tensor], first: int, epoch: int) -> None:
    """Stop at a non-finite loss among ``step_losses[first:]``, naming the first such step of the
    epoch. Checked every FINITE_CHECK_STEPS steps rather than each step: a check waits for the GPU to
    finish, and the steps taken after the bad one change only the in-memory model, never a saved
    checkpoint."""
    if first >= len(step_losses):
        return
    finite = torch.isfinite(torch.stack(step_losses[first:])).cpu()
    if bool(finite.all()):
        return
    step = first + int((~finite).nonzero()[0]) + 1
    raise TrainingError(f"non-finite training loss ({step_losses[step - 1].item()}) at epoch {epoch}, step {step}; "
                        "the fold stopped and its last checkpoint is kept; lower --learning-rate "
                        "or try --no-amp")


@torch.no_grad()
def evaluate(model: CLIPClassifier, loader: DataLoader, device: torch.device,
             amp_dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Class probabilities, true labels and dataset indices of ``loader``, and the mean cross-entropy."""
    scorer = FoldModel.prepare(model)
    probs, labels, indices, loss_sum = [], [], [], 0.0
    for images, batch_labels, batch_indices in loader:
        logits = image_logits(scorer, images, device, amp_dtype)
        loss_sum += F.cross_entropy(logits, batch_labels.to(device), reduction="sum").item()
        probs.append(logits.softmax(dim=1).cpu().numpy())
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    n = sum(len(x) for x in labels)
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(indices), loss_sum / max(n, 1)


def parameter_groups(model: CLIPClassifier, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: tower-specific learning rates (per layer group of the image backbone with
    --layer-decay, training.layers); no weight decay on biases, norms, the scale and
    lookup tables (``nn.Embedding``). A table row that no class description uses gets no gradient,
    and without decay keeps its value exactly: checkpoints then store only the rows that trained
    (training.checkpoints), instead of, e.g., all of CLIP's 49,408 token rows in every checkpoint."""
    tables = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    layer_mult = decay_multipliers(model, cfg.layer_decay, cfg.image_encoder)  # {} without --layer-decay
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("image_encoder."):
            mult = cfg.image_lr_mult * layer_mult.get(name, 1.0)
        elif name.startswith("text_encoder."):
            mult = cfg.text_lr_mult
        else:
            mult = 1.0
        decay = parameter.ndim >= 2 and name != "logit_scale" and id(parameter) not in tables
        groups.setdefault((mult, decay), []).append(parameter)
    return [{"params": params, "lr": cfg.learning_rate * mult,
             "weight_decay": cfg.weight_decay if decay else 0.0}
            for (mult, decay), params in groups.items()]


def build_optimizer(model: CLIPClassifier, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, fused: one pass over each parameter per step instead of
    about ten element-wise passes. A trainable CLIP text tower holds a 25M-row token embedding that
    gets a (mostly zero) gradient every step; unfused, AdamW was a third of a CPU training step."""
    return torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.learning_rate, fused=True)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up to 1, then cosine decay to 0."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def largest_fitting_batch(try_batch: Callable[[int], None], start: int) -> int:
    """Halve from ``start`` until ``try_batch(n)`` runs without CUDA running out of memory; 0 if none."""
    size = start
    while size >= 1:
        try:
            try_batch(size)
            return size
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size //= 2
    return 0


def out_of_memory_error(model: CLIPClassifier, cfg: TrainConfig, device: torch.device,
                        amp_dtype: torch.dtype | None, processes: int = 1) -> TrainingError:
    """Probe which batch size fits, and say so (under torchrun a process holds 1/``processes`` of the
    global --batch-size, and the advice is a global batch again)."""
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()

    def try_batch(size: int) -> None:
        images = torch.randn(size, 3, cfg.img_size, cfg.img_size, device=device)
        with autocast(device, amp_dtype):
            image_emb, class_emb, scale = model(to_device(images, device))
        labels = torch.zeros(size, dtype=torch.long, device=device)
        class_contrastive_loss(image_emb, class_emb, labels, scale).backward()
        model.zero_grad(set_to_none=True)

    fits = largest_fitting_batch(try_batch, cfg.batch_size // processes // 2) * processes
    advice = (f"a batch of {fits} fits: rerun with --batch-size {fits}" if fits
              else "not even a batch of 1 fits: use a smaller --img-size or encoder")
    return TrainingError(f"CUDA out of memory at --batch-size {cfg.batch_size} on {device}; {advice}")


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic

