#!/usr/bin/env python3
"""Accuracy of the class-level loss (docs/design.md §4) against the plain per-row CLIP loss, same run.

Three cross-validated trainings on the digits demo data with the same seed, folds and model:

* ``clip-rows`` — the plain CLIP loss: image i ↔ the text of row i, every other row a negative,
  even rows of the same class (the false negatives the design avoids);
* ``ce`` — image → class cross-entropy only (``--loss ce``);
* ``symmetric`` — image → class plus class → image (the default).

Prints a table and writes JSON. Takes a few minutes on 2 CPU cores::

    .venv/bin/python benchmarks/bench_loss.py [--epochs 2] [--n-splits 3]
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import training.engine  # noqa: E402
from data.demo import build_demo_dataset  # noqa: E402


def per_row_clip_loss(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                      logit_scale: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """The plain CLIP loss on a classification batch: row i's text is its class's text."""
    row_text = class_emb[labels].float()
    logits = logit_scale.float() * image_emb.float() @ row_text.t()
    targets = torch.arange(len(labels), device=labels.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def run_trainer_with_loss(loss: str, argv: list[str]) -> None:
    """Run train_clip.py as ``__main__`` with the engine's loss replaced for ``clip-rows``."""
    if loss == "clip-rows":
        training.engine.class_contrastive_loss = per_row_clip_loss
    sys.argv = [str(ROOT / "train_clip.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


def train(data: Path, texts: Path, out: Path, args: argparse.Namespace, loss: str) -> dict:
    argv = ["--data-dir", str(data), "--class-texts-file", str(texts), "--image-encoder", "resnet18",
            "--text-encoder", "all-MiniLM-L6-v2", "--freeze-text", "--img-size", "32", "--augmentation", "none",
            "--batch-size", "64", "--epochs", str(args.epochs), "--learning-rate", "1e-3", "--warmup-epochs", "0.5",
            "--use-cv", "--n-splits", str(args.n_splits), "--num-workers", "0", "--output-dir", str(out),
            "--log-file", str(out.with_suffix(".log")), "--loss", "ce" if loss == "ce" else "symmetric"]
    # The trainer runs as a program (nothing imports train_clip.py), in a child process whose engine
    # uses the loss under test.
    child = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; "
             f"import bench_loss; bench_loss.run_trainer_with_loss({loss!r}, sys.argv[1:])")
    if subprocess.run([sys.executable, "-c", child, *argv]).returncode != 0:
        raise SystemExit(f"training with loss {loss} failed; see {out.with_suffix('.log')}")
    summary = json.loads((out / "cv_summary.json").read_text())
    return {"mean": summary["mean"], "std": summary["std"], "wall_time_s": summary["wall_time_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-splits", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10,
                        help="Keep the first N digit classes (few classes = many repeats per batch, the "
                             "case where the per-row loss's false negatives are most frequent).")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/loss_<N>classes.json)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = build_demo_dataset(Path(tmp) / "digits")
        for folder in sorted(images.iterdir())[args.classes:]:
            shutil.rmtree(folder)
        texts = Path(tmp) / "digits" / "class_texts_en.json"
        for loss in ("clip-rows", "ce", "symmetric"):
            results[loss] = train(images, texts, Path(tmp) / loss, args, loss)
    print(f"\n{'loss':<12}{'accuracy':>20}{'balanced accuracy':>22}{'macro-F1':>20}{'vs clip-rows':>14}")
    base = results["clip-rows"]["mean"]["balanced_accuracy"]
    for loss, r in results.items():
        m, s = r["mean"], r["std"]
        print(f"{loss:<12}{m['accuracy']:>12.4f} ± {s['accuracy']:.4f}{m['balanced_accuracy']:>14.4f} ± "
              f"{s['balanced_accuracy']:.4f}{m['macro_f1']:>12.4f} ± {s['macro_f1']:.4f}"
              f"{m['balanced_accuracy'] / base:>13.3f}x")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"loss_{args.classes}classes.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
