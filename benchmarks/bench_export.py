#!/usr/bin/env python3
"""Images/s of an exported bundle's ONNX model under onnxruntime on the CPU against predict.py's own
scoring (training.ensemble.ensemble_probs on the fold models it loads), batch 1 and 32, one process.

A tiny run is trained first (2 folds, 1 epoch, random weights: speed does not depend on them), then
exported as the ensemble of its two folds; both sides classify the same preprocessed images with
the same number of threads. Decoding is the same code on both sides (data/pixels.py) and is left out.

Prints a table and writes JSON (``--out``). Usage::

    .venv/bin/python benchmarks/bench_export.py [--image-encoder resnet18] [--img-size 224] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from export import __main__ as export_cli  # noqa: E402
from tests.helpers import make_image_tree, make_tiny_text_encoder  # noqa: E402
from training.ensemble import checkpoint_paths, ensemble_probs, load_models  # noqa: E402
from utils.run_dir import RunDir  # noqa: E402


def images_per_second(batch: int, size: int, images: int, repeats: int,
                      classify: Callable[[np.ndarray], object]) -> float:
    """Best of ``repeats`` passes over ``images`` random inputs in batches of ``batch`` (after one warm-up)."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((batch, 3, size, size), dtype=np.float32) for _ in range(max(1, images // batch))]
    classify(inputs[0])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for x in inputs:
            classify(x)
        best = min(best, time.perf_counter() - started)
    return len(inputs) * batch / best


def train_and_export(work: Path, image_encoder: str, size: int) -> tuple[Path, Path]:
    data = make_image_tree(work / "data", {"a": 4, "b": 4}, size=size)
    bert = work / "bert"
    bert.mkdir()
    make_tiny_text_encoder(bert)
    run = work / "run"
    subprocess.run([sys.executable, str(ROOT / "train_clip.py"), "--data-dir", str(data), "--image-encoder",
                    image_encoder, "--text-encoder", f"hf:{bert}", "--img-size", str(size), "--epochs", "1",
                    "--batch-size", "4", "--select-on", "last", "--augmentation", "none", "--num-workers", "0",
                    "--use-cv", "--n-splits", "2", "--output-dir", str(run), "--log-file", str(work / "t.log")],
                   check=True, stdout=subprocess.DEVNULL)
    assert export_cli.main([str(run), "--output", str(work / "bundle"), "--format", "onnx"]) == 0
    return run, work / "bundle" / "models" / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-encoder", default="resnet18")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run, model = train_and_export(Path(tmp), args.image_encoder, args.img_size)
        device = torch.device("cpu")
        folds = load_models(checkpoint_paths(RunDir(run), None, False), device, None).models
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        sides = {"predict.py (torch, ensemble_probs)":
                 lambda x: ensemble_probs(folds, torch.from_numpy(x), device, None),
                 "exported ONNX (onnxruntime)": lambda x: session.run(None, {"image": x})}
        rows = {batch: {name: images_per_second(batch, args.img_size, args.images, args.repeats, f)
                        for name, f in sides.items()} for batch in (1, 32)}
    names = list(sides)
    print(f"\n{args.image_encoder}, {args.img_size} px, ensemble of 2 folds, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'batch':>5} | {names[0]:>34} | {names[1]:>28} | ONNX / predict.py")
    for batch, speeds in rows.items():
        print(f"{batch:>5} | {speeds[names[0]]:>30.1f} i/s | {speeds[names[1]]:>24.1f} i/s | "
              f"{speeds[names[1]] / speeds[names[0]]:.2f}x")
    write_result(args.out, {
        "image_encoder": args.image_encoder, "img_size": args.img_size, "folds": 2, "threads": args.threads,
        "images_per_pass": args.images, "repeats": args.repeats, "machine": platform.machine(),
        "load_average_1min": os.getloadavg()[0],  # other jobs on the cores slow torch's threads most
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "images_per_second": {str(b): s for b, s in rows.items()},
        "onnx_over_predict": {str(b): s[names[1]] / s[names[0]] for b, s in rows.items()}})


if __name__ == "__main__":
    main()
