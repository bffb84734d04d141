"""The embedded demo dataset: scikit-learn's bundled handwritten digits as a folder-per-class tree.

``python -m data.demo OUT_DIR`` writes 1,797 real 8×8 grayscale images (10 classes) as PNG
files under ``OUT_DIR/images/<class>/`` plus class descriptions in English
(``class_texts_en.json``) and Chinese (``class_texts_zh.json``). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from utils.io import write_json

NUMBER_WORDS_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMBER_WORDS_ZH = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]
log = logging.getLogger("train_clip.demo")


def class_folder(digit: int) -> str:
    return f"{digit}_{NUMBER_WORDS_EN[digit]}"


def build_demo_dataset(out_dir: str | Path) -> Path:
    """Write the digits tree and both class-text files; returns the image folder.

    Everything is written to a temporary sibling folder that is renamed into place at the end,
    so an interrupted build never leaves a half-filled tree that looks complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it to build the demo data again")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _write_demo_tree(staging)
    os.replace(staging, out_dir)
    log.info("Demo data ready in %s", out_dir)
    return out_dir / "images"


def _write_demo_tree(out_dir: Path) -> None:
    images_dir = out_dir / "images"
    digits = load_digits()
    counters = np.zeros(10, dtype=int)
    for pixels, digit in zip(digits.images, digits.target):
        folder = images_dir / class_folder(int(digit))
        folder.mkdir(parents=True, exist_ok=True)
        # The bundled images hold 0..16 per pixel; stretch to the full 8-bit range.
        array = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(array, mode="L").save(folder / f"digit_{int(digit)}_{counters[digit]:04d}.png")
        counters[digit] += 1
    write_json(out_dir / "class_texts_en.json", {
        class_folder(d): [f"a handwritten digit {NUMBER_WORDS_EN[d]}",
                          f"a scanned image of the number {d} written by hand"]
        for d in range(10)})
    write_json(out_dir / "class_texts_zh.json", {
        class_folder(d): [f"手写数字{NUMBER_WORDS_ZH[d]}", f"一张手写的数字 {d} 的扫描图像"] for d in range(10)})
    log.info("Wrote %d digit images", int(counters.sum()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="demo_data/digits", help="Where to write the demo data.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build_demo_dataset(args.out_dir)
    except FileExistsError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
