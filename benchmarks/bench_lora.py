#!/usr/bin/env python3
"""Checkpoint bytes and time of a short run with LoRA (``--lora-rank``) against full fine-tuning.

The same 2-fold run (tiny images, ``--epochs 1``, no test set) of two trainable towers with
attention blocks: a ViT-S/16 image tower (``timm:vit_small_patch16_224``, 22M parameters, random
weights, at 32 px) and the bundled pretrained MiniLM text tower (``all-MiniLM-L6-v2``, 23M), once
fully fine-tuned and once per LoRA rank. Counted per setting: the trainable parameters, the bytes of
one fold's ``checkpoint_best.pth``, the bytes the run's checkpoints take on disk (every fold's
checkpoints and ``frozen_towers.pth``, a hard link once, as ``du`` counts), and the run's wall time;
ratios are to full fine-tuning in the same invocation. A fold's ``checkpoint_latest.pth`` while it
trains also holds AdamW's two moments of the trainable parameters, so LoRA shrinks it by more than
the best checkpoint (it is dropped when the fold finishes, so it is not counted here)::

    .venv/bin/python benchmarks/bench_lora.py [--ranks 4 16] [--out benchmarks/results/lora_checkpoint_bytes.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.bench_checkpoint_bytes import bytes_on_disk, checkpoint_files, train  # noqa: E402
from benchmarks.output import write_result  # noqa: E402
from tests.helpers import make_image_tree  # noqa: E402
from utils.io import load_checkpoint  # noqa: E402
from utils.run_dir import RunDir  # noqa: E402


def numel(state: dict) -> int:
    return sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))


def measure(run_dir: RunDir, seconds: float) -> dict:
    best = run_dir.best_checkpoint(1)
    on_disk, _ = bytes_on_disk(checkpoint_files(run_dir))
    return {"fold_checkpoint_bytes": best.stat().st_size, "run_checkpoint_bytes": on_disk,
            "frozen_towers_bytes": run_dir.frozen_towers.stat().st_size if run_dir.frozen_towers.is_file() else 0,
            "saved_parameters": numel(load_checkpoint(best)["model"]), "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--image-encoder", default="timm:vit_small_patch16_224")
    parser.add_argument("--text-encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--images-per-class", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora_checkpoint_bytes.json"))
    args = parser.parse_args()

    settings = {"full": [], **{f"lora-{r}": ["--lora-rank", str(r)] for r in args.ranks}}
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        data = make_image_tree(root / "data", {"class_a": args.images_per_class, "class_b": args.images_per_class},
                               size=32)
        for name, flags in settings.items():
            run_dir = RunDir(root / name)
            results[name] = {"flags": flags, **measure(run_dir, train(data, run_dir.path, flags, args, n_splits=2))}
            print(f"{name}: fold checkpoint {results[name]['fold_checkpoint_bytes'] / 1e6:.1f} MB", flush=True)
    full = results["full"]
    for r in results.values():
        r["fold_checkpoint_ratio"] = r["fold_checkpoint_bytes"] / full["fold_checkpoint_bytes"]
        r["run_checkpoint_ratio"] = r["run_checkpoint_bytes"] / full["run_checkpoint_bytes"]
        r["time_ratio"] = r["train_seconds"] / full["train_seconds"]

    print(f"\nCheckpoints of a 2-fold run ({args.image_encoder} + {args.text_encoder}, 1 epoch), LoRA vs full")
    print(f"{'setting':<10}{'saved params':>14}{'fold ckpt MB':>14}{'ratio':>8}{'run MB':>9}{'ratio':>8}"
          f"{'seconds':>9}{'ratio':>7}")
    for name, r in results.items():
        print(f"{name:<10}{r['saved_parameters']:>14,}{r['fold_checkpoint_bytes'] / 1e6:>14.2f}"
              f"{r['fold_checkpoint_ratio']:>8.1%}{r['run_checkpoint_bytes'] / 1e6:>9.1f}{r['run_checkpoint_ratio']:>8.1%}"
              f"{r['train_seconds']:>9.1f}{r['time_ratio']:>7.2f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    write_result(args.out, {"args": vars(args), "torch": torch.__version__, "python": platform.python_version(),
                            "load_average_1min": load, "results": results})


if __name__ == "__main__":
    main()
