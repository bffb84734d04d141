#!/usr/bin/env python3
"""Training throughput of one training over 1 and N processes (torchrun), same global batch.

Each configuration is a real ``torchrun --nproc-per-node N train_clip.py`` run on the digits demo
data (one hold-out split, 1,437 training images), and its throughput is the training images of an
epoch over the epoch's time (training plus the validation of that epoch, as the log reports it),
averaged over the epochs after the first (the first pays for start-up and DDP's first-step setup).
Reported, not asserted.

On the CPU (default) the processes use gloo and each gets ``--threads`` threads (1 by default), as
each GPU process gets one GPU: N processes use N times the hardware of one, and the speed-up says
how much of it the training turns into images/s (the gathering and the gradient all-reduce cost
the rest). Run it on an otherwise idle machine: shared cores make every number noisy, threads
waiting for a busy core worst of all. On GPUs (``--device cuda``) process k uses GPU k with NCCL::

    .venv/bin/python benchmarks/bench_ddp.py                          # CPU: 1 vs 2 gloo processes, ~5 min
    .venv/bin/python benchmarks/bench_ddp.py --device cuda --processes 1 4 --image-encoder resnet50 \\
        --img-size 224 --batch-size 256 --epochs 3

Writes ``benchmarks/results/ddp_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.run_arguments import add_run_arguments  # noqa: E402
from data.demo import build_demo_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, epochs=2, batch_size=64, batch_help="The global batch, the same for every count.")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="Process counts to compare; the first is the baseline.")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/ddp_<device>.json)")
    args = parser.parse_args()
    if args.device == "cuda" and max(args.processes) > torch.cuda.device_count():
        parser.error(f"--processes {max(args.processes)} needs as many GPUs; this machine has "
                     f"{torch.cuda.device_count()}")
    for n in args.processes:
        if args.batch_size % n:
            parser.error(f"--batch-size {args.batch_size} must divide among {n} processes")
    return args


def train(n: int, data: Path, texts: Path, out: Path, args: argparse.Namespace) -> dict:
    """One run over ``n`` processes; its throughput from the epochs' times in history.json."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer takes a GPU whenever it sees one
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", "localhost:0", str(ROOT / "train_clip.py"),
               "--data-dir", str(data), "--class-texts-file", str(texts), "--image-encoder", args.image_encoder,
               "--text-encoder", "all-MiniLM-L6-v2", "--freeze-text", "--img-size", str(args.img_size),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--learning-rate", "1e-3",
               "--num-workers", "0", "--output-dir", str(out), "--log-file", str(out.with_suffix(".log"))]
    if subprocess.run(command, env=env).returncode != 0:
        raise SystemExit(f"the run over {n} process(es) failed; see {out.with_suffix('.log')}")
    n_train = len(json.loads((out / "folds.json").read_text())["folds"][0]["train"])
    per_epoch = (n_train // args.batch_size) * args.batch_size  # drop_last: full global batches only
    seconds = [row["seconds"] for row in json.loads((out / "fold_1" / "history.json").read_text())
               if row["epoch"] >= 1]
    steady = seconds[1:] or seconds
    return {"processes": n, "threads_per_process": args.threads if args.device == "cpu" else None,
            "images_per_epoch": per_epoch, "epoch_seconds": seconds,
            "images_per_s": round(per_epoch / mean(steady), 1)}


def main() -> int:
    args = parse_args()
    results = []
    load_before = os.getloadavg()  # other work on the machine skews every number: recorded with them
    with tempfile.TemporaryDirectory() as tmp:
        data = build_demo_dataset(Path(tmp) / "digits")
        texts = Path(tmp) / "digits" / "class_texts_en.json"
        for n in args.processes:
            results.append(train(n, data, texts, Path(tmp) / f"run_{n}", args))
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup"] = round(r["images_per_s"] / base, 2)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{platform.processor() or 'CPU'}, " \
        f"{os.cpu_count()} cores"
    print(f"\n{args.image_encoder} at {args.img_size} px, global batch {args.batch_size}, on {device}")
    print(f"{'processes':>10}{'threads each':>14}{'images/s':>12}{'speed-up':>10}")
    for r in results:
        print(f"{r['processes']:>10}{r['threads_per_process'] or '-':>14}{r['images_per_s']:>12.1f}"
              f"{r['speedup']:>9.2f}x")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"ddp_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "device": device, "torch": torch.__version__,
                               "load_average_1min": {"before": round(load_before[0], 2),
                                                     "after": round(os.getloadavg()[0], 2)},
                               "results": results}, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
