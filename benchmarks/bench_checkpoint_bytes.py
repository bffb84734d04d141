#!/usr/bin/env python3
"""Checkpoint bytes of one 5-fold run, before and after issue 14's checkpoint layout.

Each setting trains a small 5-fold run (tiny images, ``--epochs 1``) with a realistic CLIP text
tower (``clip:ViT-B/32:scratch``: 63M parameters, about 254 MB as float32, the pretrained tower's
size) and a resnet18 image tower, then counts:

- **after**: the bytes the run's checkpoints take on disk (``fold_K/checkpoint_*.pth`` and
  ``frozen_towers.pth``; a hard-linked file counts once, as ``du`` counts it);
- **before**: what the earlier layout wrote for the same run: every fold's best and latest
  checkpoint each holding the whole model as float32 (format ``train_clip/1``). They are rebuilt
  from the run's own checkpoints (frozen towers put back, weights cast to float32) and saved into a
  scratch folder, so both numbers come from the same trained models, in one invocation.

Checkpoint bytes scale with the parameter count; the ratios depend on the share of the text tower
in the model (a larger image tower raises the frozen-tower ratio). Prints a table and writes JSON::

    .venv/bin/python benchmarks/bench_checkpoint_bytes.py [--settings frozen trainable trainable-bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tests.helpers import make_image_tree  # noqa: E402
from training.checkpoint_format import full_model_state  # noqa: E402
from utils.io import load_checkpoint, save_checkpoint  # noqa: E402
from utils.run_dir import RunDir  # noqa: E402

# Setting -> extra flags, and the target its "after" must meet (share of the "before" bytes).
SETTINGS = {
    "frozen": (["--freeze-text"], 0.25),
    "frozen-bf16": (["--freeze-text", "--checkpoint-dtype", "bfloat16"], 0.25),
    "trainable": ([], 0.60),
    "trainable-bf16": (["--checkpoint-dtype", "bfloat16"], 0.60),
}
OLD_FORMAT = "train_clip/1"


def train(data: Path, out: Path, flags: list[str], args: argparse.Namespace, n_splits: int = 5) -> float:
    """Seconds of one short run of the trainer (tiny images, one epoch, ``n_splits`` folds, no test set)."""
    started = time.perf_counter()
    # The trainer runs as a program (nothing imports train_clip.py), in a child process.
    code = subprocess.run([sys.executable, str(ROOT / "train_clip.py"), "--data-dir", str(data),
                           "--image-encoder", args.image_encoder, "--text-encoder", args.text_encoder,
                           "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--learning-rate", "1e-4",
                           "--warmup-epochs", "0", "--augmentation", "none", "--num-workers", "0", "--use-cv",
                           "--n-splits", str(n_splits), "--bootstrap-resamples", "0", "--output-dir", str(out),
                           "--log-file", str(out.parent / f"{out.name}.log"), *flags],
                          stdout=subprocess.DEVNULL).returncode
    if code != 0:
        raise SystemExit(f"training {out.name} failed (exit {code}); see {out.parent / f'{out.name}.log'}")
    return time.perf_counter() - started


def checkpoint_files(run_dir: RunDir) -> list[Path]:
    files = sorted(run_dir.path.glob("fold_*/checkpoint_*.pth"))
    return files + ([run_dir.frozen_towers] if run_dir.frozen_towers.is_file() else [])


def bytes_on_disk(files: list[Path]) -> tuple[int, int]:
    """(bytes with each hard-linked file once, bytes summed over names)."""
    stats = [f.stat() for f in files]
    unique = {(s.st_dev, s.st_ino): s.st_size for s in stats}
    return sum(unique.values()), sum(s.st_size for s in stats)


def old_layout_bytes(run_dir: RunDir, scratch: Path) -> int:
    """Bytes of the earlier layout: best and latest per fold, each a full float32 model."""
    total = 0
    for path in sorted(run_dir.path.glob("fold_*/checkpoint_*.pth")):
        saved = load_checkpoint(path)
        whole = {key: value.float() if value.is_floating_point() else value
                 for key, value in full_model_state(saved, path).items()}
        saved.pop("shared_weights", None)
        target = scratch / path.parent.name / path.name
        save_checkpoint(target, {**saved, "format": OLD_FORMAT, "model": whole})
        total += target.stat().st_size
        target.unlink()
    return total


def linked_folds(run_dir: RunDir) -> int:
    return sum(run_dir.latest_checkpoint(k).is_file() and run_dir.best_checkpoint(k).is_file()
               and os.path.samefile(run_dir.latest_checkpoint(k), run_dir.best_checkpoint(k))
               for k in run_dir.fold_numbers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--text-encoder", default="clip:ViT-B/32:scratch")
    parser.add_argument("--image-encoder", default="resnet18")
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checkpoint_bytes.json"))
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        data = make_image_tree(root / "data", {"class_a": args.images_per_class, "class_b": args.images_per_class},
                               size=32)
        for name in args.settings:
            flags, target = SETTINGS[name]
            run_dir = RunDir(root / name)
            seconds = train(data, run_dir.path, flags, args)
            after, named = bytes_on_disk(checkpoint_files(run_dir))
            before = old_layout_bytes(run_dir, root / f"{name}_old_layout")
            results[name] = {"flags": flags, "before_bytes": before, "after_bytes": after,
                             "after_bytes_counting_links_twice": named, "ratio": after / before,
                             "target": target, "meets_target": after / before <= target,
                             "folds_with_latest_linked_to_best": linked_folds(run_dir),
                             "frozen_towers_bytes": (run_dir.frozen_towers.stat().st_size
                                                     if run_dir.frozen_towers.is_file() else 0),
                             "train_seconds": round(seconds, 1)}
            print(f"{name}: {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB", flush=True)
            for file in checkpoint_files(run_dir):  # keep the scratch disk small between settings
                file.unlink()

    print(f"\nCheckpoint bytes of one 5-fold run ({args.image_encoder} + {args.text_encoder}, 1 epoch)")
    print(f"{'setting':<16}{'before MB':>11}{'after MB':>10}{'after/before':>14}{'target':>8}  met  "
          f"{'folds linked':>12}")
    for name, r in results.items():
        print(f"{name:<16}{r['before_bytes'] / 1e6:>11.1f}{r['after_bytes'] / 1e6:>10.1f}{r['ratio']:>14.1%}"
              f"{'<= ' + format(r['target'], '.0%'):>8}  {'yes' if r['meets_target'] else 'NO ':<3}  "
              f"{r['folds_with_latest_linked_to_best']:>9}/5")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "python": platform.python_version(),
                               "results": results}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
