"""The flags of the benchmarks that start whole trainings (bench_ddp, bench_jobs_per_gpu): one place
for their names and their small-model defaults."""
from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser, epochs: int, batch_size: int,
                      batch_help: str | None = None) -> None:
    """--device, --epochs, --batch-size, --image-encoder, --img-size and --threads of each training."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--image-encoder", default="starnet_s050")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (OMP) of each process of a CPU run.")
