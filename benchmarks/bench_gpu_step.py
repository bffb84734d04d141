#!/usr/bin/env python3
"""Our training step against the image backbone's own forward + backward, same batch, same device.

Ours: ``train_one_epoch`` (the trainer's code: device transfer, channels_last on CUDA, autocast,
class-contrastive loss, fused AdamW, LR schedule) over synthetic batches, with the class texts of
the demo digits and a frozen CLIP text tower unless ``--trainable-text``. Baseline: the same
backbone alone (a fresh copy), forward + backward of ``features.square().mean()``, no optimiser,
with the same autocast dtype, memory format and torch.compile setting. Target on a GPU: ours at
>= 70 % of the baseline's images/s (224 px, bf16, channels_last, --compile).

On CUDA the defaults are the target's settings; on a CPU (no GPU here) run it small to check that it
works, e.g.::

    .venv/bin/python benchmarks/bench_gpu_step.py                       # CUDA: 224 px, batch 128, compiled
    .venv/bin/python benchmarks/bench_gpu_step.py --img-size 32 --batch-size 8 --steps 3 --no-compile

Prints a table and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from models.clip_model import CLIPClassifier, build_clip_model  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.engine import build_optimizer, train_one_epoch, warmup_cosine  # noqa: E402
from utils.device import autocast, compile_mode, mixed_precision_dtype, to_device  # noqa: E402

CLASS_TEXTS = [[f"a handwritten digit {word}", f"a scanned image of the number {digit} written by hand"]
               for digit, word in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine"])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(device: torch.device, steps: int, batch: int, run: Callable[[int], None]) -> float:
    """``run(n)`` does n steps; two warm-up steps (compilation, allocator) are not timed."""
    run(2)
    synchronize(device)
    started = time.perf_counter()
    run(steps)
    synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def print_profile(label: str, device: torch.device, run: Callable[[], None]) -> None:
    """The operators taking the most device time (CPU time without a GPU) over ``run()``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        run()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- profile: {label} ---")
    print(profile.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


@dataclass
class TrainingStep:
    """What ``train_one_epoch`` needs besides a loader, built as train_clip.py builds it."""

    model: CLIPClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None

    def epoch(self, loader: Iterable,
              augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        return train_one_epoch(self.model, loader, self.optimizer, self.scheduler, self.scaler, self.device,
                               self.amp_dtype, True, 1, augment=augment)


def build_training_step(image_encoder: str, text_encoder: str, trainable_text: bool, img_size: int, batch_size: int,
                        device: torch.device, amp: bool, compiled: str | None) -> TrainingStep:
    """The model on ``device`` (channels_last on CUDA; compiled unless ``compiled`` is None, as
    train_clip.py --compile --compile-mode ``compiled`` does), fused AdamW, a constant LR."""
    model = build_clip_model(image_encoder, text_encoder, 512, 0.07, CLASS_TEXTS, freeze_text=not trainable_text,
                             load_pretrained=False, img_size=img_size)
    model.to(device)
    if device.type == "cuda":  # as train_clip.py does
        model.image_encoder.to(memory_format=torch.channels_last)
    if compiled is not None:
        model.compile_towers(compile_mode(compiled, device))
    optimizer = build_optimizer(model, TrainConfig(learning_rate=1e-4, batch_size=batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10**6, 0))
    amp_dtype = mixed_precision_dtype(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return TrainingStep(model, optimizer, scheduler, scaler, device, amp_dtype)


def synthetic_batch(batch_size: int, img_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A normalised image batch with labels and indices, pinned on CUDA as the trainer's loader pins it."""
    batch = (torch.randn(batch_size, 3, img_size, img_size), torch.randint(0, len(CLASS_TEXTS), (batch_size,)),
             torch.arange(batch_size))
    return tuple(t.pin_memory() for t in batch) if device.type == "cuda" else batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-encoder", default="resnet50")
    parser.add_argument("--text-encoder", default="clip:ViT-B/32:scratch")
    parser.add_argument("--trainable-text", action="store_true", help="Train the text tower too.")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="Timed steps per measurement (after two warm-up steps).")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Measurements of each, alternating; the best of each is compared.")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="Also profile N steps of each (torch.profiler) and print where the time goes.")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the image encoder (default: on CUDA only).")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead"), default="default",
                        help="torch.compile's mode, as train_clip.py --compile-mode (reduce-overhead: CUDA graphs).")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_step.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    step = build_training_step(args.image_encoder, args.text_encoder, args.trainable_text, args.img_size,
                               args.batch_size, device, not args.no_amp, compiled=None)
    backbone = copy.deepcopy(step.model.image_encoder)  # a plain copy, before ours is compiled
    if compile_:
        step.model.compile_towers(compile_mode(args.compile_mode, device))
        backbone.compile(mode=compile_mode(args.compile_mode, device))
    amp_dtype = step.amp_dtype
    batch = synthetic_batch(args.batch_size, args.img_size, device)

    def ours(steps: int) -> None:
        step.epoch([batch] * steps)

    def backbone_only(steps: int) -> None:
        backbone.train()
        for _ in range(steps):
            backbone.zero_grad(set_to_none=True)
            with autocast(device, amp_dtype):
                features = backbone(to_device(batch[0], device))
            features.float().square().mean().backward()

    # Alternating measurements: clocks and a shared host drift; one short run of each can differ
    # by 20 % on the same card.
    measured: dict[str, list[float]] = {"backbone": [], "ours": []}
    for _ in range(args.repeats):
        measured["backbone"].append(images_per_s(device, args.steps, args.batch_size, backbone_only))
        measured["ours"].append(images_per_s(device, args.steps, args.batch_size, ours))
    baseline, ours_rate = max(measured["backbone"]), max(measured["ours"])
    ratio = ours_rate / baseline
    if args.profile:
        for label, run in (("backbone", backbone_only), ("ours", ours)):
            print_profile(label, device, lambda: run(args.profile))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"{'run':<48}{'images/s':>10}")
    print(f"{'backbone forward + backward (' + args.image_encoder + ')':<48}{baseline:>10.1f}")
    print(f"{'train_clip training step':<48}{ours_rate:>10.1f}")
    print(f"ours / backbone: {ratio:.1%} (target on a GPU: >= 70%) on {name}; {args.img_size} px, batch "
          f"{args.batch_size}, amp {amp_dtype}, channels_last {device.type == 'cuda'}, compile {compile_}"
          f"{' (' + args.compile_mode + ')' if compile_ else ''}")
    result = {"device": name, "machine": platform.platform(), "torch": torch.__version__,
              "args": {**vars(args), "compile": compile_}, "amp_dtype": str(amp_dtype),
              "backbone_images_per_s": baseline, "ours_images_per_s": ours_rate, "ratio": ratio,
              "measurements_images_per_s": measured}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
