#!/usr/bin/env python3
"""One short CUDA smoke check of the paths the CPU test suite cannot reach (run it on a GPU machine).

1. A 2-fold run with AMP (bfloat16 where supported, else float16 + GradScaler) and channels_last,
   then the same run with --no-amp: both finish, the AMP run's history counts skipped steps, and
   the epoch-time ratio AMP / full precision is reported.
2. predict.py on the GPU reproduces fold 1's logged validation accuracy.
3. CUDA out of memory (resnet152 at 2048 px) stops with a message naming a batch size that fits.

Prints a table and writes JSON to ``$OUT/cuda_smoke.json`` (or ``benchmarks/results/``), each
program's stderr to ``cuda_smoke_runs.log`` beside it. About 4 minutes on an H200 (each program
starts in ~15 s; see benchmarks/results/gpu_h200.md)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cuda_smoke.py
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tests.helpers import make_image_tree, make_tiny_text_encoder  # noqa: E402


OUT_DIR = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")


def run(script: str, args: list[str], label: str) -> tuple[int, str]:
    """Run one of the project's programs (train_clip.py, predict.py) as a user would; its exit code
    (124 past $SMOKE_RUN_TIMEOUT seconds) and stderr, which is also appended to ``cuda_smoke_runs.log``."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                              timeout=float(os.environ.get("SMOKE_RUN_TIMEOUT", 600)))
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as stopped:
        partial = stopped.stderr or b""  # bytes even with text=True
        code, err = 124, partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    seconds = time.perf_counter() - started
    print(f"{label}: exit {code} in {seconds:.1f} s", flush=True)
    with open(OUT_DIR / "cuda_smoke_runs.log", "a", encoding="utf-8") as log:
        log.write(f"===== {label}: exit {code} in {seconds:.1f} s\n{err}\n")
    return code, err


def mean_epoch_seconds(run_dir: Path) -> float:
    rows = [r for k in (1, 2) for r in json.loads((run_dir / f"fold_{k}" / "history.json").read_text())
            if r["epoch"] > 1]  # epoch 1 includes cuDNN autotuning
    return sum(r["seconds"] for r in rows) / len(rows)


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA is not available: this smoke check needs a GPU", file=sys.stderr)
        return 2
    results: dict[str, object] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_image_tree(root / "data", {"a": 40, "b": 40, "股骨柄A": 40}, size=64)
        text = make_tiny_text_encoder(Path(tempfile.mkdtemp(dir=tmp)))
        common = ["--data-dir", str(data), "--text-encoder", f"hf:{text}", "--image-encoder", "resnet50",
                  "--img-size", "224", "--epochs", "3", "--batch-size", "32", "--num-workers", "4",
                  "--use-cv", "--n-splits", "2", "--learning-rate", "1e-3"]
        for name, extra in (("amp", []), ("fp32", ["--no-amp"])):
            code, err = run("train_clip.py", common + ["--output-dir", str(root / name), "--log-file",
                                                       str(root / f"{name}.log"), *extra], name)
            results[f"{name}_exit"] = code
            if code != 0:
                print(err[-3000:], file=sys.stderr)
                continue
            results[f"{name}_epoch_s"] = mean_epoch_seconds(root / name)
            results[f"{name}_accuracy"] = json.loads((root / name / "cv_summary.json").read_text())["mean"]["accuracy"]
        history = json.loads((root / "amp" / "fold_1" / "history.json").read_text())
        results["amp_skipped_steps_logged"] = all("amp_skipped_steps" in r for r in history[1:])
        if "amp_epoch_s" in results and "fp32_epoch_s" in results:
            results["amp_speedup"] = results["fp32_epoch_s"] / results["amp_epoch_s"]

        folds = json.loads((root / "amp" / "folds.json").read_text())
        val = root / "val"
        for rel in folds["folds"][0]["val"]:
            (val / rel).parent.mkdir(parents=True, exist_ok=True)
            (val / rel).write_bytes((data / rel).read_bytes())
        run("predict.py", ["--run-dir", str(root / "amp"), "--images", str(val), "--fold", "1",
                           "--output", str(root / "preds.csv")], "predict")
        with open(root / "preds.csv", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        correct = sum(Path(r["path"]).parent.name == r["predicted_class"] for r in rows)
        logged = json.loads((root / "amp" / "cv_summary.json").read_text())["folds"][0]["metrics"]["accuracy"]
        results["predict_matches_fold_1"] = abs(correct / len(rows) - logged) < 1e-9

        oom_args = ["--data-dir", str(data), "--text-encoder", f"hf:{text}", "--image-encoder", "resnet152",
                    "--img-size", "2048", "--epochs", "1", "--batch-size", "48", "--num-workers", "2",
                    "--use-cv", "--n-splits", "2", "--output-dir", str(root / "oom"),
                    "--log-file", str(root / "oom.log")]
        code, err = run("train_clip.py", oom_args, "oom")
        results["oom_exit"] = code
        results["oom_message"] = next((line for line in err.splitlines() if "out of memory" in line), err[-500:])

    for key, value in results.items():
        print(f"{key:<28}{value}")
    out = OUT_DIR / "cuda_smoke.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    ok = results.get("amp_exit") == 0 and results.get("fp32_exit") == 0 and results["predict_matches_fold_1"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
