#!/usr/bin/env python3
"""What recording and checking every checkpoint's SHA-256 costs (issue 24), for a ~300 MB checkpoint.

Against a baseline in the same invocation, on the same file system:

- **write**: ``torch.save`` into an atomic temporary file with fsync (what the trainer did before)
  against :func:`utils.io.save_checkpoint` (the same, hashing the bytes as they are written) and
  :func:`utils.checksums.save_recorded` (that, plus the fold's two record writes);
- **read**: :func:`utils.io.load_checkpoint` against :func:`utils.checksums.load_recorded` (the file
  hashed, then loaded), and the hash alone (:func:`utils.io.file_sha256`).

The file is read back from the page cache (it was just written), as a resumed run or predict.py
right after training finds it; a cold read adds the disk's own time to both sides. Median of
``--repeats``. Prints a table and writes JSON::

    .venv/bin/python benchmarks/bench_checkpoint_hash.py [--megabytes 300] [--repeats 3] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from utils.checksums import load_recorded, save_recorded  # noqa: E402
from utils.io import atomic_write, file_sha256, load_checkpoint, save_checkpoint  # noqa: E402


def state_of(megabytes: int) -> dict:
    """A model-like state: float32 matrices of 4 MB each, ``megabytes`` in all."""
    generator = torch.Generator().manual_seed(0)
    count = max(1, megabytes // 4)
    return {"model": {f"layer{i}.weight": torch.randn(1024, 1024, generator=generator) for i in range(count)},
            "epoch": 1}


def plain_save(path: Path, state: dict) -> None:
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="Folder to write in (default: the system's temporary folder).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checkpoint_hash.json"))
    args = parser.parse_args()
    state = state_of(args.megabytes)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        fold = Path(scratch) / "fold_1"
        plain, hashed, recorded = fold / "plain.pth", fold / "hashed.pth", fold / "checkpoint_best.pth"
        fold.mkdir()
        rows = {
            "write: torch.save, atomic (baseline)": median_seconds(lambda: plain_save(plain, state), args.repeats),
            "write: hashed while written": median_seconds(lambda: save_checkpoint(hashed, state), args.repeats),
            "write: hashed + recorded": median_seconds(lambda: save_recorded(recorded, state), args.repeats),
        }
        size = recorded.stat().st_size
        reads = {
            "read: load_checkpoint (baseline)": median_seconds(lambda: load_checkpoint(recorded), args.repeats),
            "read: verified, then loaded": median_seconds(lambda: load_recorded(recorded), args.repeats),
            "read: SHA-256 alone": median_seconds(lambda: file_sha256(recorded), args.repeats),
        }
    write_base = rows["write: torch.save, atomic (baseline)"]
    read_base = reads["read: load_checkpoint (baseline)"]
    table = {**{k: (v, v / write_base) for k, v in rows.items()}, **{k: (v, v / read_base) for k, v in reads.items()}}
    print(f"checkpoint of {size / 1e6:.0f} MB, median of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'step':42s} {'seconds':>8s} {'x baseline':>10s}")
    for name, (seconds, ratio) in table.items():
        print(f"{name:42s} {seconds:8.3f} {ratio:10.2f}")
    print(f"SHA-256 throughput: {size / 1e6 / reads['read: SHA-256 alone']:.0f} MB/s")
    write_result(args.out, {"bytes": size, "repeats": args.repeats, "machine": platform.machine(),
                            "processor": platform.processor(), "cpus": os.cpu_count(), "torch": torch.__version__,
                            "seconds": {k: round(v, 4) for k, (v, _) in table.items()},
                            "ratio_to_baseline": {k: round(r, 3) for k, (_, r) in table.items()},
                            "sha256_mb_per_s": round(size / 1e6 / reads["read: SHA-256 alone"], 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
