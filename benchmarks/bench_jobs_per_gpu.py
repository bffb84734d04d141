#!/usr/bin/env python3
"""Study throughput with JOBS_PER_GPU = 1 against K: the same small jobs through run_train_clip.sh.

Each configuration runs one whole study on one GPU slot: a config list of ``--jobs`` entries (the
same image encoder, seeds 0, 1, ...; one hold-out split of the digits demo data, frozen text tower)
with JOBS_PER_GPU = K. Reported, not asserted, with ratios against the first K of the same
invocation:

- **study images/s**: every job's training images (epochs × the full batches of an epoch) over the
  study's wall time, start-up included: what a user waits for;
- **steady images/s**: each job's own images/s over its epochs after the first (the first pays
  for start-up), times the jobs that ran at once (K): what the GPU sustains while K jobs share it.

On the CPU (default) DRIVER_FORCE_CPU keeps the GPU schedule with CUDA hidden, so the K jobs share
the cores (``--threads`` each); it checks the mechanics, the numbers that matter are the GPU's
(issue 25's target: JOBS_PER_GPU=4 ≥ 2.5 × JOBS_PER_GPU=1 for small models)::

    .venv/bin/python benchmarks/bench_jobs_per_gpu.py              # CPU: 2 starnet_s050 jobs at 32 px, K 1 vs 2
    .venv/bin/python benchmarks/bench_jobs_per_gpu.py --device cuda --jobs 4 --k 1 4 \\
        --image-encoder resnet18 --img-size 224 --batch-size 64 --epochs 6 --num-workers 3

Writes ``benchmarks/results/jobs_per_gpu_<device>.json``; each study's console and logs are kept
under ``--work-dir`` when given (default: a temporary folder, removed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from benchmarks.run_arguments import add_run_arguments  # noqa: E402
from data.demo import build_demo_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, epochs=3, batch_size=32)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2], help="JOBS_PER_GPU values; the first is the baseline.")
    parser.add_argument("--jobs", type=int, default=2, help="Jobs in the study (the same for every K).")
    parser.add_argument("--text-encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="Keep the studies here (default: a temporary folder).")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/jobs_per_gpu_<device>.json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if min(args.k) < 1 or args.jobs < 1:
        parser.error("--k and --jobs must be 1 or more")
    return args


def study_env(k: int, folder: Path, data: Path, texts: Path, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, USE_MULTI_CONFIG="true", CONFIG_FILE=str(folder / "jobs.json"), JOBS_PER_GPU=str(k),
               GPUS="0", GPUS_PER_JOB="1", DATA_DIR=str(data), CLASS_TEXTS_FILE=str(texts),
               OUTPUT_ROOT=str(folder / "runs"), LOG_DIR=str(folder / "logs"), EPOCHS=str(args.epochs),
               IMG_SIZE=str(args.img_size), BATCH_SIZE=str(args.batch_size), NUM_WORKERS=str(args.num_workers),
               USE_CV="false", LEARNING_RATE="1e-3", EXTRA_ARGS="--freeze-text", PYTHON=sys.executable,
               DRIVER_POLL_SECONDS="0.2", OMP_NUM_THREADS=str(args.threads), FORCE="false")
    if args.device == "cpu":
        env["DRIVER_FORCE_CPU"] = "1"
    return env


def job_rates(run: Path, batch_size: int) -> tuple[int, float]:
    """A finished job's training images and its steady images/s (epochs after the first)."""
    n_train = len(json.loads((run / "folds.json").read_text(encoding="utf-8"))["folds"][0]["train"])
    per_epoch = (n_train // batch_size) * batch_size  # drop_last: full batches only
    seconds = [row["seconds"] for row in json.loads((run / "fold_1" / "history.json").read_text(encoding="utf-8"))
               if row["epoch"] >= 1]
    steady = seconds[1:] or seconds
    return per_epoch * len(seconds), per_epoch / mean(steady)


def run_study(k: int, work: Path, data: Path, texts: Path, args: argparse.Namespace) -> dict:
    folder = work / f"jobs_per_gpu_{k}"
    folder.mkdir(parents=True)
    entries = [{"image_encoder": args.image_encoder, "text_encoder": args.text_encoder, "seed": seed}
               for seed in range(args.jobs)]
    (folder / "jobs.json").write_text(json.dumps(entries), encoding="utf-8")
    started = time.perf_counter()
    with open(folder / "study.out", "w", encoding="utf-8") as console:
        code = subprocess.run(["bash", str(ROOT / "run_train_clip.sh")], env=study_env(k, folder, data, texts, args),
                              cwd=folder, stdout=console, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the study with JOBS_PER_GPU={k} failed (exit {code}); see {folder / 'study.out'}")
    runs = sorted(p for p in (folder / "runs").iterdir() if p.is_dir())
    images, rates = zip(*(job_rates(run, args.batch_size) for run in runs))
    return {"jobs_per_gpu": k, "jobs": len(runs), "wall_s": round(wall, 1), "images": sum(images),
            "study_images_per_s": round(sum(images) / wall, 1),
            "job_steady_images_per_s": [round(r, 1) for r in rates],
            "steady_images_per_s": round(mean(rates) * min(k, len(runs)), 1)}


def describe_device(args: argparse.Namespace) -> str:
    if args.device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()  # other work on the machine skews every number: recorded with them
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        data = build_demo_dataset(work / "digits")
        texts = work / "digits" / "class_texts_en.json"
        results = [run_study(k, work, data, texts, args) for k in args.k]
    base = results[0]
    for r in results:
        r["study_ratio"] = round(r["study_images_per_s"] / base["study_images_per_s"], 2)
        r["steady_ratio"] = round(r["steady_images_per_s"] / base["steady_images_per_s"], 2)
    device = describe_device(args)
    print(f"\n{args.jobs} x {args.image_encoder} at {args.img_size} px, batch {args.batch_size}, {args.epochs} epochs, "
          f"on {device}")
    print(f"{'JOBS_PER_GPU':>12}{'wall s':>9}{'study img/s':>13}{'ratio':>7}{'steady img/s':>14}{'ratio':>7}")
    for r in results:
        print(f"{r['jobs_per_gpu']:>12}{r['wall_s']:>9.1f}{r['study_images_per_s']:>13.1f}{r['study_ratio']:>6.2f}x"
              f"{r['steady_images_per_s']:>14.1f}{r['steady_ratio']:>6.2f}x")
    write_result(args.out or ROOT / "benchmarks" / "results" / f"jobs_per_gpu_{args.device}.json",
                 {"args": vars(args), "device": device, "torch": torch.__version__,
                  "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
                  "results": results, "rounds_of_jobs": [math.ceil(args.jobs / k) for k in args.k]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
