#!/usr/bin/env python3
"""train_clip against open_clip_train on the demo digits: same model, data, batch, size and epochs.

Both sides train a random timm ``resnet18`` image tower and a random ViT-B/32-size text tower
(open_clip's CLIP text transformer, QuickGELU, 77-token context), at 32 px, batch 64, lr 1e-3,
weight decay 0.01, on the same training images (the split train_clip makes), in one process each:

* text tower trained: ``train_clip --text-encoder clip:ViT-B/32:scratch`` vs ``open_clip_train``;
* text tower frozen: ``train_clip --freeze-text`` vs ``open_clip_train --lock-text``, and against the
  ceiling: the bare resnet18 forward + backward + fused AdamW on a fixed batch, in this process.

images/s is training images per second of wall time of the training loop (data loading included;
validation, checkpoints and process start-up excluded), in the fastest epoch after the first (the
first warms up allocators and caches; the fastest, because other jobs on a shared machine only ever
slow an epoch down). For train_clip the epoch time is ``train_seconds`` in the fold's history.json;
for open_clip_train the sum of its per-step ``Batch (t)`` times (``--log-every-n-steps 1``), which
also run from the end of one step to the end of the next. The ceiling is the fastest of as many
epochs' worth of steps. Validation accuracy: train_clip's from its
history; open_clip's by classifying the same validation images against the class texts (the mean of
each class's normalised description embeddings, as train_clip does) with its last checkpoint.

Needs benchmarks/requirements-bench.txt (open_clip_torch[training]). Prints a table and writes JSON::

    .venv/bin/python benchmarks/bench_vs_open_clip.py [--images-per-class 30] [--epochs 2] [--ours-epochs 4]
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from data.demo import build_demo_dataset  # noqa: E402
from utils.io import load_checkpoint  # noqa: E402

log = logging.getLogger("bench_vs_open_clip")
TEXT_TOWER = "ViT-B-32-quickgelu"  # open_clip's config behind train_clip's clip:ViT-B/32
IMAGE_TOWER = "resnet18"  # timm name: timm:resnet18 for train_clip, timm_model_name for open_clip
# open_clip_train logs one line per step with --log-every-n-steps 1; "Batch (t)" is that step's time.
STEP_LINE = re.compile(r"Train Epoch: (\d+) \[.*?Batch \(t\): ([0-9.]+),")


def open_clip_model_config() -> dict[str, Any]:
    """open_clip's ViT-B/32 text tower with a random timm resnet18 image tower at 32 px."""
    import open_clip

    config = open_clip.get_model_config(TEXT_TOWER)
    config["vision_cfg"] = {"image_size": 32, "timm_model_name": IMAGE_TOWER, "timm_model_pretrained": False,
                            "timm_pool": "avg", "timm_proj": "linear"}
    return config


def subset_dataset(work: Path, per_class: int) -> tuple[Path, Path]:
    """The demo digits, ``per_class`` images of each class (copied); returns (image folder, texts file)."""
    full = build_demo_dataset(work / "digits")
    subset = work / "subset"
    for class_dir in sorted(p for p in full.iterdir() if p.is_dir()):
        (subset / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(image, subset / class_dir.name / image.name)
    return subset, work / "digits" / "class_texts_en.json"


def run_train_clip(images: Path, texts: Path, out: Path, args: argparse.Namespace, freeze_text: bool) -> dict:
    """One train_clip run (one split, no cross-validation) in its own process."""
    command = [sys.executable, str(ROOT / "train_clip.py"), "--data-dir", str(images), "--class-texts-file",
               str(texts), "--image-encoder", f"timm:{IMAGE_TOWER}", "--text-encoder", "clip:ViT-B/32:scratch",
               "--img-size", "32", "--augmentation", "none", "--batch-size", str(args.batch_size),
               "--epochs", str(args.ours_epochs), "--learning-rate", str(args.lr), "--weight-decay", "0.01",
               "--warmup-epochs", "0", "--num-workers", "0", "--bootstrap-resamples", "0",
               "--output-dir", str(out), "--overwrite"] + (["--freeze-text"] if freeze_text else [])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    history = json.loads((out / "fold_1" / "history.json").read_text())
    measured = [row for row in history if row["epoch"] >= 2]
    n_train = len(json.loads((out / "folds.json").read_text())["folds"][0]["train"])
    images_per_epoch = n_train // args.batch_size * args.batch_size  # drop_last
    return {"images_per_s": images_per_epoch / min(row["train_seconds"] for row in measured),
            "epoch_with_validation_images_per_s": images_per_epoch / min(row["seconds"] for row in measured),
            "val_accuracy": history[-1]["accuracy"], "train_seconds": [row["train_seconds"] for row in history[1:]]}


def split_of(run_dir: Path, images: Path) -> tuple[list[Path], list[Path]]:
    """train_clip's training and validation files (folds.json lists them relative to the data folder)."""
    fold = json.loads((run_dir / "folds.json").read_text())["folds"][0]
    return [images / p for p in fold["train"]], [images / p for p in fold["val"]]


def write_open_clip_inputs(work: Path, train: list[Path], class_texts: dict[str, list[str]]) -> tuple[Path, Path]:
    """The training CSV (filepath,title: the class descriptions in turn) and the model config file."""
    table = work / "train.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        for i, path in enumerate(train):
            descriptions = class_texts[path.parent.name]
            writer.writerow([str(path), descriptions[i % len(descriptions)]])
    config = work / "bench-resnet18-vitb32text.json"
    config.write_text(json.dumps(open_clip_model_config()))
    return table, config


def run_open_clip(table: Path, config: Path, logs: Path, name: str, args: argparse.Namespace, n_train: int,
                  lock_text: bool) -> dict:
    main_args = ["--train-data", str(table), "--dataset-type", "csv", "--csv-separator", ",",
                 "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", config.stem,
                 "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                 "--wd", "0.01", "--warmup", "0", "--workers", "0", "--device", "cpu", "--precision", "fp32",
                 "--log-every-n-steps", "1", "--save-frequency", str(args.epochs), "--logs", str(logs),
                 "--name", name, "--seed", "42"]
    if lock_text:
        main_args += ["--lock-text", "--lock-text-freeze-layer-norm"]
    # open_clip_train finds models by name: register the config file in its process first.
    code = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
            "from open_clip_train.main import main; main(sys.argv[2:])")
    subprocess.run([sys.executable, "-c", code, str(config), *main_args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    steps = [(int(epoch), float(seconds)) for epoch, seconds in
             STEP_LINE.findall((logs / name / "out.log").read_text(encoding="utf-8"))]
    steps_per_epoch = n_train // args.batch_size
    epoch_seconds = [sum(seconds for e, seconds in steps if e == epoch) for epoch in range(1, args.epochs)]
    if len(steps) != steps_per_epoch * args.epochs:  # 0-based epochs; the first (0) is not timed
        raise RuntimeError(f"open_clip_train logged {len(steps)} steps, expected {steps_per_epoch * args.epochs}; "
                           f"see {logs / name / 'out.log'}")
    return {"images_per_s": steps_per_epoch * args.batch_size / min(epoch_seconds),
            "checkpoint": str(logs / name / "checkpoints" / f"epoch_{args.epochs}.pt"),
            "train_seconds": epoch_seconds}


@torch.no_grad()
def open_clip_accuracy(config: Path, checkpoint: str, val: list[Path], class_texts: dict[str, list[str]]) -> float:
    """Zero-shot style accuracy of the trained open_clip model: each validation image against the
    class embeddings (mean of the normalised description embeddings, renormalised)."""
    import open_clip
    from PIL import Image

    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=None)
    # open_clip_train saves plain values and tensors (epoch, name, state_dict, optimizer, scaler).
    state = load_checkpoint(checkpoint, ("state_dict",))["state_dict"]
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    model.eval()
    tokenizer = open_clip.get_tokenizer(config.stem)
    names = sorted(class_texts)
    classes = torch.stack([model.encode_text(tokenizer(class_texts[name]), normalize=True).mean(0)
                           for name in names])
    classes = torch.nn.functional.normalize(classes, dim=-1)
    images = torch.stack([preprocess(Image.open(path)) for path in val])
    predicted = (model.encode_image(images, normalize=True) @ classes.t()).argmax(dim=1)
    truth = torch.tensor([names.index(path.parent.name) for path in val])
    return float((predicted == truth).float().mean())


def ceiling_images_per_s(args: argparse.Namespace, steps: int, repeats: int) -> float:
    """The bare image tower: timm resnet18 forward + backward + fused AdamW on one fixed batch;
    the fastest of ``repeats`` runs of ``steps`` steps."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(IMAGE_TOWER, pretrained=False, num_classes=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, fused=True)
    images = torch.randn(args.batch_size, 3, 32, 32)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images).square().mean().backward()
        optimizer.step()

    for _ in range(2):  # warm-up
        step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - started)
    return steps * args.batch_size / best


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=30,
                        help="Demo digits per class (of about 180); 80%% of them train.")
    parser.add_argument("--epochs", type=int, default=2,
                        help="Epochs of each open_clip_train run; all but the first are timed.")
    parser.add_argument("--ours-epochs", type=int, default=4,
                        help="Epochs of each train_clip run (and ceiling repeats); all but the first are timed.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_vs_open_clip.json"))
    parser.add_argument("--workdir", help="Keep the runs here (default: a temporary folder).")
    args = parser.parse_args()
    if min(args.epochs, args.ours_epochs) < 2:
        parser.error("--epochs and --ours-epochs must be at least 2: the first epoch is not timed")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench_vs_open_clip_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        images, texts_file = subset_dataset(work, args.images_per_class)
        class_texts = json.loads(texts_file.read_text(encoding="utf-8"))
        loads = [load_average()]
        log.info("train_clip, text tower trained ...")
        ours_trained = run_train_clip(images, texts_file, work / "ours_trained", args, freeze_text=False)
        log.info("train_clip, text tower frozen ...")
        ours_frozen = run_train_clip(images, texts_file, work / "ours_frozen", args, freeze_text=True)
        train, val = split_of(work / "ours_trained", images)
        log.info("ceiling: resnet18 forward + backward + AdamW ...")
        ceiling = ceiling_images_per_s(args, len(train) // args.batch_size, args.ours_epochs - 1)
        table, config = write_open_clip_inputs(work, train, class_texts)
        log.info("open_clip_train --lock-text ...")
        theirs_locked = run_open_clip(table, config, work / "logs", "locked", args, len(train), lock_text=True)
        log.info("open_clip_train, text tower trained ...")
        theirs_trained = run_open_clip(table, config, work / "logs", "trained", args, len(train), lock_text=False)
        for result in (theirs_locked, theirs_trained):
            result["val_accuracy"] = open_clip_accuracy(config, result.pop("checkpoint"), val, class_texts)
        loads.append(load_average())
    rows = [
        ("open_clip_train, text tower trained", theirs_trained, None),
        ("train_clip, clip:ViT-B/32:scratch trained", ours_trained, ours_trained["images_per_s"]
         / theirs_trained["images_per_s"]),
        ("open_clip_train --lock-text", theirs_locked, None),
        ("train_clip --freeze-text", ours_frozen, ours_frozen["images_per_s"] / theirs_locked["images_per_s"]),
    ]
    ratio_to_ceiling = ours_frozen["images_per_s"] / ceiling
    print(f"\n{'run':<44}{'images/s':>10}{'ratio':>9}{'val acc':>9}")
    for name, result, ratio in rows:
        print(f"{name:<44}{result['images_per_s']:>10.1f}{(f'{ratio:.1f}x' if ratio else '1'):>9}"
              f"{result['val_accuracy']:>9.3f}")
    print(f"{'resnet18 alone, fwd + bwd + AdamW (ceiling)':<44}{ceiling:>10.1f}{'-':>9}{'-':>9}")
    print(f"\ntrain_clip --freeze-text / ceiling: {ratio_to_ceiling:.1%} (target >= 90%); trained text tower "
          f"vs open_clip_train: {rows[1][2]:.1f}x (target >= 10x)")
    print(f"load average (1 min) before / after: {loads[0]:.1f} / {loads[1]:.1f} on {os.cpu_count()} CPUs")
    result = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "load_average_before_after": loads, "args": {k: v for k, v in vars(args).items() if k != "workdir"},
              "n_train": len(train), "n_val": len(val),
              "images_per_s_definition": "training images / wall time of the training loop (data loading "
                                         "included; validation, checkpoints, start-up excluded), in the fastest "
                                         "epoch after the first",
              "open_clip_trained": theirs_trained, "train_clip_trained": ours_trained,
              "open_clip_locked_text": theirs_locked, "train_clip_frozen_text": ours_frozen,
              "ceiling_images_per_s": ceiling, "ratio_trained_vs_open_clip": rows[1][2],
              "ratio_frozen_vs_open_clip_locked": rows[3][2], "ratio_frozen_vs_ceiling": ratio_to_ceiling}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
