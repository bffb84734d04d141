"""The data sets of bench_quality.py: small, public, shipped inside scikit-learn, written deterministically.

Nothing is downloaded (scikit-image, whose ``skimage.data`` textures the issue suggested, is not in
the virtualenv):

* ``digits_imbalanced``: scikit-learn's 8x8 handwritten digits, the first 150 of class 0 down to
  the first 10 of class 9 (geometric counts, 10 classes): a class imbalance of 15:1, 549 images.
* ``textures``: 7 classes, each one region of ``load_sample_images()``' two photographs (sky,
  temple tower, lake, trees of ``china.jpg``; petals, centre and blurred background of
  ``flower.jpg``, see :data:`TEXTURE_CLASSES`), 120 down to 15 crops per class (373 images) of 40 to
  72 px at random places of the region, saved at 32 px; every third crop of a class saved as
  grayscale (mode L), the rest RGB. Two of the classes share colours (petals and centre; sky and
  lake, in grayscale), so the set is learnable but not at its ceiling.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from utils.io import write_json

# The data of every set is drawn from this seed alone, never from the benchmark's --seeds: the
# images stay the same whatever seeds or commits are compared.
DATA_SEED = 0


def geometric_counts(largest: int, smallest: int, n_classes: int) -> list[int]:
    """Class sizes falling geometrically from ``largest`` to ``smallest``."""
    ratio = (smallest / largest) ** (1 / (n_classes - 1))
    return [round(largest * ratio ** c) for c in range(n_classes)]


def build_digits_imbalanced(out: Path) -> dict[str, list[str]]:
    """The digits set (see the module docstring) under ``out``; returns the class texts."""
    from sklearn.datasets import load_digits

    from data.demo import NUMBER_WORDS_EN

    digits = load_digits()
    texts = {}
    for digit, count in enumerate(geometric_counts(150, 10, 10)):
        name = f"{digit}_{NUMBER_WORDS_EN[digit]}"
        (out / name).mkdir(parents=True)
        images = digits.images[digits.target == digit][:count]
        for i, pixels in enumerate(images):
            array = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
            Image.fromarray(array, mode="L").save(out / name / f"{i:04d}.png")
        texts[name] = [f"a handwritten digit {NUMBER_WORDS_EN[digit]}"]
    return texts


# (class, photograph, region as (left, top, right, bottom) in its 640 x 427 pixels, description);
# each region was chosen by eye to hold one texture only.
TEXTURE_CLASSES = [
    ("sky", "china", (360, 0, 640, 140), "a clear pale blue sky"),
    ("tower", "china", (110, 100, 320, 330), "a red and green painted temple tower"),
    ("lake", "china", (330, 225, 545, 300), "the grey water of a lake with boats"),
    ("trees", "china", (360, 310, 640, 427), "dark green trees on a hillside"),
    ("petals", "flower", (200, 110, 430, 310), "orange dahlia petals"),
    ("centre", "flower", (265, 175, 355, 255), "the tightly curled centre of a dahlia"),
    ("background", "flower", (0, 0, 170, 427), "a blurred dark teal background"),
]
TEXTURE_COUNTS = geometric_counts(120, 15, len(TEXTURE_CLASSES))
TEXTURE_CROPS = (40, 72)  # crop sides in pixels, drawn uniformly (at most the region's smaller side)
TEXTURE_SIZE = 32  # saved size (the trainer resizes to the recipe's --img-size)


def build_textures(out: Path) -> dict[str, list[str]]:
    """The textures set (see the module docstring) under ``out``; returns the class texts."""
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {Path(f).stem: image for f, image in zip(sample.filenames, sample.images)}
    rng = np.random.default_rng(DATA_SEED)
    texts = {}
    for number, ((label, photo, (left, top, right, bottom), text), count) in enumerate(
            zip(TEXTURE_CLASSES, TEXTURE_COUNTS)):
        region = photos[photo][top:bottom, left:right]
        name = f"{number}_{label}"
        (out / name).mkdir(parents=True)
        for i in range(count):
            side = int(rng.integers(TEXTURE_CROPS[0], min(TEXTURE_CROPS[1], *region.shape[:2]) + 1))
            y = int(rng.integers(0, region.shape[0] - side + 1))
            x = int(rng.integers(0, region.shape[1] - side + 1))
            crop = Image.fromarray(region[y:y + side, x:x + side]).resize((TEXTURE_SIZE, TEXTURE_SIZE),
                                                                           Image.BILINEAR)
            (crop.convert("L") if i % 3 == 0 else crop).save(out / name / f"{i:04d}.png")
        texts[name] = [f"a photo of {text}"]
    return texts


DATA_SETS: Mapping[str, Callable[[Path], dict[str, list[str]]]] = {
    "digits_imbalanced": build_digits_imbalanced,
    "textures": build_textures,
}


def build_data(name: str, work: Path) -> tuple[Path, Path]:
    """One data set as a folder per class and its class-texts file under ``work / name``; both paths."""
    images = work / name / "images"
    texts = DATA_SETS[name](images)
    texts_file = work / name / "class_texts.json"
    write_json(texts_file, texts)
    return images, texts_file


def data_fingerprint(images: Path, texts_file: Path) -> str:
    """SHA-256 of every image's path and bytes and of the class texts: a changed builder (or another
    PIL writing other PNG bytes) is a different data set, whose scores must not be paired."""
    digest = hashlib.sha256(texts_file.read_bytes())
    for path in sorted(images.rglob("*.png")):
        digest.update(path.relative_to(images).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
