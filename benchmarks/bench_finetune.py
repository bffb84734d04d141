#!/usr/bin/env python3
"""What each fine-tuning method gives on the demo data, beside the plain recipe (one table + JSON).

The demo recipe (``make demo``: scikit-learn's 1,797 8x8 digits, a resnet18 from scratch, a frozen
pretrained MiniLM text tower, 32 px, batch 64, 5-fold CV), once plain and once with each method.
Score: mean ± std over the 5 folds of the balanced accuracy of each fold's chosen model; time: the
CPU seconds of the whole run (one thread each, so a shared machine's load does not enter them), and
their ratio to the plain recipe's in the same invocation; the wall time is in the JSON too.

The image tower starts from random weights, so the methods built for pretrained towers (LP-FT,
layer decay, partial unfreezing) have nothing to protect here and may well cost accuracy; WiSE-FT
needs a pretrained zero-shot start (paired CLIP towers), which cannot be had offline: it is listed as
not applicable rather than run on random CLIP weights. Usage::

    .venv/bin/python benchmarks/bench_finetune.py [--epochs 3] [--out benchmarks/results/finetune.json]
    # a quick check that the script works (not a measurement):
    .venv/bin/python benchmarks/bench_finetune.py --per-class 12 --folds 2 --epochs 2 --batch-size 16 --out /tmp/f.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from data.demo import build_demo_dataset  # noqa: E402

RECIPES: dict[str, list[str]] = {
    "plain": [],
    "accum ×4": ["--accum-steps", "4"],
    "EMA 0.9": ["--ema-decay", "0.9"],  # 19 steps per epoch at batch 64: the average spans ~10 steps
    "LP-FT 1 epoch": ["--lp-epochs", "1"],
    "layer decay 0.8": ["--layer-decay", "0.8"],
    "last 4 groups": ["--unlocked-groups", "4"],
}
NOT_APPLICABLE = {"WiSE-FT": "needs paired pretrained CLIP towers (a zero-shot start); none offline",
                  "LoRA": "a resnet18 has no attention blocks to adapt (see bench_lora.py)"}


def demo_args(images: Path, texts: Path, args: argparse.Namespace, out: Path) -> list[str]:
    return ["--data-dir", str(images), "--class-texts-file", str(texts), "--image-encoder", "resnet18:scratch",
            "--text-encoder", "all-MiniLM-L6-v2", "--freeze-text", "--img-size", "32", "--augmentation", "none",
            "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--learning-rate", "1e-3",
            "--warmup-epochs", "0.5",
            "--use-cv", "--n-splits", str(args.folds), "--num-workers", "0", "--bootstrap-resamples", "0",
            "--output-dir", str(out), "--log-file", str(out.parent / f"{out.name}.log")]


def run(name: str, flags: list[str], images: Path, texts: Path, args: argparse.Namespace, work: Path) -> dict:
    """One ``train_clip.py`` process (scripts do not import each other)."""
    out = work / name.replace(" ", "_").replace("×", "x")
    started, cpu_before = time.perf_counter(), children_cpu()
    command = [sys.executable, str(ROOT / "train_clip.py"), *demo_args(images, texts, args, out),
               *flags]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    code = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode
    seconds, cpu_seconds = time.perf_counter() - started, children_cpu() - cpu_before
    if code != 0:
        raise SystemExit(f"{name}: train_clip.py exited with {code}; see {out.parent / (out.name + '.log')}")
    summary = json.loads((out / "cv_summary.json").read_text())
    print(f"  {name}: done in {seconds:.0f}s ({cpu_seconds:.0f} CPU-s)", flush=True)
    return {"recipe": name, "flags": flags, "balanced_accuracy_mean": summary["mean"]["balanced_accuracy"],
            "balanced_accuracy_std": summary["std"]["balanced_accuracy"],
            "per_fold": [f["metrics"]["balanced_accuracy"] for f in summary["folds"]], "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1)}


def children_cpu() -> float:
    """CPU seconds of the finished children: what a run cost, whatever else the machine was doing."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def keep_first(images: Path, per_class: int) -> None:
    """Keep the first ``per_class`` images of each class (a quick run of the script itself)."""
    for folder in images.iterdir():
        for extra in sorted(folder.iterdir())[per_class:]:
            extra.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=0, help="Keep this many images per class (0: all); "
                        "for a quick check of the script, not a measurement.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of each training (default 1: "
                        "CPU seconds compare across recipes on a shared machine).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = build_demo_dataset(work / "digits")
        texts = work / "digits" / "class_texts_en.json"
        if args.per_class:
            keep_first(images, args.per_class)
        rows = [run(name, flags, images, texts, args, work) for name, flags in RECIPES.items()]
    plain = rows[0]
    score = f"balanced accuracy ({args.folds} folds)"
    print(f"{'recipe':<18} {score:>28} {'Δ vs plain':>11} {'CPU time':>9} {'× plain':>8}")
    for row in rows:
        row["difference_vs_plain"] = row["balanced_accuracy_mean"] - plain["balanced_accuracy_mean"]
        row["cpu_time_vs_plain"] = row["cpu_seconds"] / plain["cpu_seconds"]
        print(f"{row['recipe']:<18} {row['balanced_accuracy_mean']:>20.4f} ± {row['balanced_accuracy_std']:.4f} "
              f"{row['difference_vs_plain']:>+11.4f} {row['cpu_seconds']:>8.1f}s {row['cpu_time_vs_plain']:>7.2f}×")
    for name, why in NOT_APPLICABLE.items():
        print(f"{name:<18} not applicable: {why}")
    write_result(args.out, {"benchmark": "bench_finetune", "epochs": args.epochs, "folds": args.folds,
                            "images_per_class": args.per_class or "all", "threads": args.threads, "rows": rows,
                            "not_applicable": NOT_APPLICABLE, "device": "cuda" if torch.cuda.is_available() else "cpu",
                            "machine": platform.platform(), "processor": platform.processor()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
