#!/usr/bin/env python3
"""A real training epoch from the decode-once cache against the step alone, per --augmentation level
and --augment-on path, on one device.

- **step only**: ``train_one_epoch`` over one synthetic normalised batch, as bench_gpu_step.py measures
  ours (its pieces: the same model, optimiser, AMP, channels_last and --compile);
- **pipeline**: the trainer's training loader alone (``training.fold.training_set``: the decode-once
  cache, the seeded sampler, full batches), each batch moved to the device and, with
  ``--augment-on device``, augmented there (``training.fold.batch_augmentation``); with one worker
  (what one worker process gives: one thread, as the DataLoader sets it) and with ``--workers N``;
- **epoch**: ``train_one_epoch`` over that loader with N persistent workers, the fastest of
  ``--repeats`` epochs after a warm-up epoch.

The cache holds random uint8 images (grayscale by default, as radiographs; ``--channels 3`` for
colour): what augmentation costs does not depend on what the pixels show. Target on a GPU: the epoch
at >= 90 % of the step alone at 224 px with ``standard`` augmentation. One command on a GPU machine::

    .venv/bin/python benchmarks/bench_epoch.py --image-encoder resnet18 --out benchmarks/results/epoch_gpu_resnet18.json

and small on a CPU, e.g.::

    .venv/bin/python benchmarks/bench_epoch.py --img-size 96 --images 256 --batch-size 32 --workers 2

Prints a table and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from benchmarks.bench_gpu_step import (CLASS_TEXTS, TrainingStep, build_training_step, images_per_s,  # noqa: E402
                                       synchronize, synthetic_batch)
from benchmarks.output import write_result  # noqa: E402
from data.batch_transforms import BatchAugmentation  # noqa: E402
from data.images import ImageCache  # noqa: E402
from data.sampling import SeededSampler  # noqa: E402
from data.transforms import AUGMENTATIONS  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.fold import batch_augmentation, training_set  # noqa: E402
from utils.seeding import seed_worker  # noqa: E402

PATHS = ("workers", "device")
SEED = 0


def synthetic_cache(images: int, channels: int, img_size: int) -> tuple[ImageCache, list[int]]:
    """A full decode-once cache of random images, and random labels of the demo's classes."""
    generator = torch.Generator().manual_seed(SEED)
    pixels = [torch.randint(0, 256, (channels, img_size, img_size), dtype=torch.uint8, generator=generator)
              for _ in range(images)]
    labels = torch.randint(0, len(CLASS_TEXTS), (images,), generator=generator).tolist()
    return ImageCache([Path(f"synthetic_{i}.png") for i in range(images)], img_size, pixels), labels


def training_loader(cfg: TrainConfig, cache: ImageCache, labels: list[int], workers: int,
                    device: torch.device) -> tuple[DataLoader, SeededSampler, BatchAugmentation | None]:
    """The loader, sampler and device augmentation a fold trains with (training/fold.py's pieces)."""
    dataset = training_set(cfg, cache, range(len(cache)), labels)
    sampler = SeededSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED)), SEED)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0, worker_init_fn=seed_worker)
    return loader, sampler, batch_augmentation(cfg, SEED)


def set_epoch(epoch: int, sampler: SeededSampler, augment: BatchAugmentation | None) -> None:
    sampler.set_epoch(epoch)
    if augment is not None:
        augment.set_epoch(epoch)


def pipeline_rate(loader: DataLoader, sampler: SeededSampler, augment: BatchAugmentation | None,
                  device: torch.device, epochs: int) -> float:
    """Images/s of the input alone, on the device and augmented: the fastest of ``epochs`` passes
    after a warm-up pass (persistent workers start in it)."""
    rates = []
    for epoch in range(epochs + 1):
        set_epoch(epoch, sampler, augment)
        started, count = time.perf_counter(), 0
        for images, _, _ in loader:
            images = images.to(device, non_blocking=True)
            if augment is not None:
                images = augment(images)
            count += len(images)
        synchronize(device)
        rates.append(count / (time.perf_counter() - started))
    return max(rates[1:])


def epoch_rate(step: TrainingStep, loader: DataLoader, sampler: SeededSampler, augment: BatchAugmentation | None,
               epochs: int) -> float:
    """Training images/s of whole epochs (``train_one_epoch``'s own clock), the fastest after a warm-up one."""
    rates = []
    for epoch in range(epochs + 1):
        set_epoch(epoch, sampler, augment)
        stats = step.epoch(loader, augment)
        rates.append(len(loader) * loader.batch_size / stats["train_seconds"])
    return max(rates[1:])


def measure(args: argparse.Namespace, device: torch.device, step: TrainingStep,
            step_only: Callable[[], float]) -> list[dict[str, Any]]:
    """A row per path and level; the step alone is measured again beside each epoch (a shared host's
    speed drifts within minutes) and the ratio is taken against that measurement."""
    cache, labels = synthetic_cache(args.images, args.channels, args.img_size)
    rows = []
    for path in args.paths:
        for level in args.levels:
            cfg = TrainConfig(data_dir=".", augmentation=level, augment_on=path, img_size=args.img_size,
                              batch_size=args.batch_size)
            one, one_sampler, augment = training_loader(cfg, cache, labels, 1, device)
            alone = pipeline_rate(one, one_sampler, augment, device, args.repeats)
            del one  # its worker ends here, not during the next measurement
            loader, sampler, augment = training_loader(cfg, cache, labels, args.workers, device)
            with_workers = pipeline_rate(loader, sampler, augment, device, args.repeats)
            row = {"augment_on": path, "augmentation": level, "pipeline_one_worker_images_per_s": alone,
                   "pipeline_workers_images_per_s": with_workers}
            if not args.pipeline_only:
                epoch = epoch_rate(step, loader, sampler, augment, args.repeats)
                ceiling = step_only()
                row.update({"epoch_images_per_s": epoch, "step_only_images_per_s": ceiling,
                            "epoch_over_step": epoch / ceiling})
            del loader  # its worker processes end here, not in the next measurement
            rows.append(row)
            print(f"  measured {row}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-encoder", default="resnet18")
    parser.add_argument("--text-encoder", default="clip:ViT-B/32:scratch", help="Frozen, as bench_gpu_step.py.")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1: grayscale images; 3: colour.")
    parser.add_argument("--images", type=int, default=4096, help="Images in the cache: one epoch.")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)),
                        help="Data-loader workers of the pipeline and the epoch (default: the cores but one, "
                             "at most 15).")
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes of each (after one warm-up pass).")
    parser.add_argument("--levels", nargs="+", choices=AUGMENTATIONS, default=list(AUGMENTATIONS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="--augment-on paths.")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the towers (default: on CUDA only).")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead"), default="default")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="Measure the input pipeline alone (no epochs, no step): cheap at 224 px on a CPU.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "epoch.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    torch.manual_seed(SEED)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    step = build_training_step(args.image_encoder, args.text_encoder, False, args.img_size, args.batch_size, device,
                               not args.no_amp, args.compile_mode if compile_ else None)
    batch = synthetic_batch(args.batch_size, args.img_size, device)
    steps = args.images // args.batch_size

    def step_only() -> float:
        return max(images_per_s(device, steps, args.batch_size, lambda n: step.epoch([batch] * n))
                   for _ in range(args.repeats))

    load_before = os.getloadavg()
    rows = measure(args, device, step, step_only)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"{'augment on':<11}{'level':<10}{'pipeline, 1 worker':>21}{f'pipeline, {args.workers} workers':>22}"
          + ("" if args.pipeline_only else f"{'epoch':>10}{'step only':>11}{'epoch / step':>14}"))
    for row in rows:
        training = ("" if args.pipeline_only else f"{row['epoch_images_per_s']:>10.1f}"
                    f"{row['step_only_images_per_s']:>11.1f}{row['epoch_over_step']:>14.1%}")
        print(f"{row['augment_on']:<11}{row['augmentation']:<10}{row['pipeline_one_worker_images_per_s']:>21.1f}"
              f"{row['pipeline_workers_images_per_s']:>22.1f}{training}")
    print(f"images/s{'' if args.pipeline_only else '; step only: one synthetic batch, measured after each epoch'}; "
          f"{args.image_encoder}, {args.img_size} px, {args.channels} channel(s), batch {args.batch_size}, "
          f"{args.images} images, amp {step.amp_dtype}, compile {compile_}, on {name}. "
          "Target on a GPU: epoch >= 90 % of the step with standard augmentation")
    result = {"device": name, "machine": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "args": {**vars(args), "compile": compile_},
              "amp_dtype": str(step.amp_dtype), "rows": rows,
              "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()}}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
