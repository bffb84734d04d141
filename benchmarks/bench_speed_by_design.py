#!/usr/bin/env python3
"""Measure the speed choices of docs/design.md §8 against their naive baselines, in one process.

1. Images: one epoch served from the decode-once RAM cache vs. decoding every file on each access
   (``--cache-mb 0``), same dataset, same transforms.
2. Text: one training step's text work for the C classes vs. for the B rows of the batch (what a
   plain CLIP loss encodes), with the real MiniLM text encoder, forward and backward.
3. Frozen text tower: class embeddings from the per-fold cache vs. re-encoding every step.

Prints a table of ratios and writes JSON (``--out``). Usage::

    .venv/bin/python benchmarks/bench_speed_by_design.py [--images 600] [--img-size 224] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from data.images import CachedImageDataset, build_image_cache  # noqa: E402
from data.transforms import ToModelInput, build_augmentation  # noqa: E402
from models.text_encoders import build_text_encoder  # noqa: E402


def best_of(repeats: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def write_radiograph_like_images(folder: Path, count: int, size: int) -> list[Path]:
    """Grayscale PNGs of a realistic size (a radiograph is usually larger still)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    base = rng.integers(0, 255, (size, size), dtype=np.uint8)
    for i in range(count):
        path = folder / f"img_{i:04d}.png"
        Image.fromarray(np.roll(base, i, axis=0)).save(path)
        paths.append(path)
    return paths


def bench_image_cache(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_radiograph_like_images(Path(tmp), args.images, args.source_size)
        labels = [0] * len(paths)
        augment = build_augmentation("standard", args.img_size)

        def epoch(budget_mb: int) -> Callable[[], None]:
            decoded = build_image_cache(paths, args.img_size, budget_mb, threads=1)
            dataset = CachedImageDataset(decoded.cache, range(len(paths)), labels, augment, ToModelInput())
            loader = DataLoader(dataset, batch_size=32, num_workers=0)
            return lambda: [None for _ in loader]

        cached = best_of(args.repeats, epoch(budget_mb=4096))
        from_disk = best_of(args.repeats, epoch(budget_mb=0))
    return {"cached_epoch_s": cached, "decode_each_time_epoch_s": from_disk, "speedup": from_disk / cached}


def bench_text(args: argparse.Namespace) -> dict[str, float]:
    encoder = build_text_encoder("all-MiniLM-L6-v2")
    classes = [f"a radiograph of femoral stem design number {k}" for k in range(args.classes)]
    rows = [classes[k % args.classes] for k in range(args.batch_size)]
    class_tokens, row_tokens = encoder.tokenize(classes), encoder.tokenize(rows)

    def step(tokens: dict[str, torch.Tensor]) -> Callable[[], None]:
        def work() -> None:
            encoder.zero_grad(set_to_none=True)
            encoder(**tokens).sum().backward()
        return work

    per_class = best_of(args.repeats, step(class_tokens))
    per_row = best_of(args.repeats, step(row_tokens))

    def frozen_step() -> None:
        with torch.no_grad():
            encoder(**class_tokens)

    frozen_reencode = best_of(args.repeats, frozen_step)
    cached = torch.zeros(args.classes, encoder.feature_dim)
    frozen_cached = best_of(args.repeats, lambda: cached.clone())
    return {"text_step_classes_s": per_class, "text_step_rows_s": per_row, "classes_vs_rows_speedup": per_row / per_class,
            "frozen_reencode_s": frozen_reencode, "frozen_cached_s": frozen_cached,
            "frozen_cache_speedup": frozen_reencode / max(frozen_cached, 1e-9)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=1024, help="Pixel size of the generated PNGs.")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_by_design.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    images = bench_image_cache(args)
    text = bench_text(args)
    rows = [
        ("one epoch of images", "decode each access", images["decode_each_time_epoch_s"], "decode-once cache",
         images["cached_epoch_s"]),
        ("text per training step", f"B={args.batch_size} rows", text["text_step_rows_s"], f"C={args.classes} classes",
         text["text_step_classes_s"]),
        ("frozen text per step", "re-encode", text["frozen_reencode_s"], "per-fold cache", text["frozen_cached_s"]),
    ]
    print(f"{'work':<24}{'baseline':<20}{'seconds':>10}  {'ours':<18}{'seconds':>10}{'speed-up':>10}")
    for work, base_name, base_s, ours_name, ours_s in rows:
        print(f"{work:<24}{base_name:<20}{base_s:>10.4f}  {ours_name:<18}{ours_s:>10.5f}{base_s / max(ours_s, 1e-9):>9.1f}x")
    result = {"machine": platform.platform(), "torch_threads": torch.get_num_threads(), "args": vars(args),
              "images": images, "text": text}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
