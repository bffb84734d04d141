"""One training over several processes (``torchrun``): who this process is, and the few collectives
the trainer needs.

A run started by ``torchrun --nproc-per-node N`` has N processes (ranks), each with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment. They train one model with PyTorch's
``DistributedDataParallel`` (NCCL between GPUs, gloo on the CPU). ``--batch-size`` stays the global
batch: each step draws one batch from the seeded sampler, the same in every process, and process r
takes its rows r, r+N, ... (:class:`ShardedBatchSampler`). Every process computes the loss of the
whole batch from all processes' image embeddings (:meth:`Distributed.gather_embeddings`), so the
class-level contrastive loss sees every image of the step, as in one process. Only rank 0 writes
files. A single process (no ``torchrun``, or ``WORLD_SIZE=1``) takes none of these paths.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, Sampler

from utils.device import select_device
from utils.errors import ConfigError

log = logging.getLogger("train_clip")

if TYPE_CHECKING:
    from training.config import TrainConfig

# How long a process waits for the others at a collective before giving up (rank 0 may spend long
# minutes alone: decoding images, the held-out test set, the report).
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=60)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank ``rank`` of ``world_size``, on GPU ``local_rank`` of its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """The torchrun variables, or a single process when they are not set."""
        try:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs below the warning level."""
        return self.rank == 0

    def device(self, gpu_id: int) -> torch.device:
        """This process's device, chosen once: ``--gpu-id`` alone; under torchrun the GPU of LOCAL_RANK."""
        if not self.enabled:
            device = select_device(gpu_id)
        else:
            if gpu_id != 0 and self.is_main:
                log.warning("--gpu-id %d is ignored under torchrun: process k of a machine uses GPU k; choose the "
                            "GPUs with CUDA_VISIBLE_DEVICES", gpu_id)
            if torch.cuda.is_available() and self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"torchrun started more processes on this machine than its "
                                  f"{torch.cuda.device_count()} GPU(s) (LOCAL_RANK {self.local_rank}): lower "
                                  "--nproc-per-node")
            device = select_device(self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    # -- the process group ---------------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        """Join the other processes: NCCL between GPUs, gloo on the CPU."""
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                                    device_id=device if device.type == "cuda" else None)

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def check_config(self, cfg: TrainConfig) -> None:
        """What the number of processes decides: the global batch must share evenly; the methods that
        change which parameters train during a fold, or run a step as several passes, need one process."""
        if not self.enabled:
            return
        alone = [flag for flag, on in (("--accum-steps", cfg.accum_steps > 1), ("--lp-epochs", cfg.lp_epochs > 0),
                                       ("--unlocked-groups", cfg.unlocked_groups > 0)) if on]
        if alone:
            raise ConfigError(f"{' and '.join(alone)}: one process only, not under torchrun (its {self.world_size} "
                              "processes already share each batch; DistributedDataParallel needs the same trainable "
                              "parameters every step); drop them or run one process")
        if cfg.batch_size % self.world_size:
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly among "
                              f"the {self.world_size} processes (WORLD_SIZE); use a multiple of {self.world_size}")

    # -- collectives -----------------------------------------------------------------------------
    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) in every process; so that all decide alike."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, in every process."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm running statistics, which each process
        updated from its own share of the last step): all then evaluate the model rank 0 saves."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def gather_embeddings(self, local: torch.Tensor) -> torch.Tensor:
        """The embeddings of the whole global batch, rank by rank; gradients flow into ``local`` only.

        Every process computes the same loss of the whole batch. The gradient of a process's image
        rows reaches only that process, while DDP averages gradients over the N processes: the hook
        multiplies those rows' gradient by N, so that the average is the single-process gradient. The
        class embeddings and the logit scale see the whole batch in every process already.
        """
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.detach().contiguous())
        own = local.view_as(local)
        own.register_hook(lambda grad: grad * self.world_size)
        parts[self.rank] = own
        return torch.cat(parts)

    def gather_labels(self, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` inside DistributedDataParallel (which starts from rank 0's weights), or itself."""
        if not self.enabled:
            return model
        # static_graph: some trainable parameters never receive a gradient (a HuggingFace tower's pooler,
        # which mean pooling skips); DDP finds them in the first step instead of searching every step
        # (find_unused_parameters). The graph is the same each step, which static_graph requires.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       static_graph=True)


class ShardedBatchSampler(Sampler):
    """This process's share of each global batch: rows ``rank, rank + world_size, ...``.

    Every process draws the same global batches (the same seeded sampler and generator), so the
    union of the processes' shares of a step is exactly the batch one process would train on,
    and the augmentation seed of each image stays that of its place in the global epoch.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, rank: int, world_size: int) -> None:
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.batches)  # global steps: the learning-rate schedule counts these

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self.batches:
            yield batch[self.rank::self.world_size]


def shard(positions: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Positions ``rank, rank + world_size, ...``: a disjoint share; the shares cover every position once."""
    return list(positions[rank::world_size])


def merge_evaluations(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float]]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Join the processes' evaluations of their shares into the whole set's, ordered by dataset index."""
    probs = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    indices = np.concatenate([p[2] for p in parts])
    n = len(indices)
    loss = sum(p[3] * len(p[2]) for p in parts) / max(n, 1)  # each part's loss is its mean
    order = np.argsort(indices, kind="stable")
    return probs[order], labels[order], indices[order], loss
