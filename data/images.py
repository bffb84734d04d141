"""Decode-once image cache and the dataset that serves it (docs/design.md §8).

Each image is decoded, padded to a square and resized to ``img_size`` once per run, then kept
as a uint8 tensor (one channel for grayscale, three for colour) while the RAM budget allows;
images past the budget are decoded again on each access. Augmentation runs on these tensors.
"""
from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import imagehash
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from data.dicom import DICOM_SUFFIX, PREAMBLE_END, DicomOptions, dicom_to_image, has_dicom_preamble, is_dicom_file
from utils.logging_setup import get_logger

log = get_logger(__name__)

# Larger images are refused: decoding one would take gigabytes, times the decoding threads.
# 100 MP is well above any radiograph (a 43x43 cm detector at 0.1 mm gives about 18 MP).
MAX_PIXELS = 100_000_000


class ImageDecodeError(RuntimeError):
    """An image file could not be decoded."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """Grayscale of any bit depth → ``L``; anything else → ``RGB`` (alpha composited on black)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float radiographs: stretch the actual range to 0..255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if img.mode in ("1", "L"):
        return img.convert("L")
    if img.mode == "LA":
        return img.convert("L")
    if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(source: str | Path | BinaryIO, img_size: int, dicom: DicomOptions = DicomOptions()) -> torch.Tensor:
    """Read an image file (path or open binary file) into a uint8 tensor (C, img_size, img_size),
    C = 1 for grayscale, 3 for colour. DICOM files are recognised by their ``.dcm`` suffix or preamble.

    The whole image is kept: it is scaled so its longer side is ``img_size`` and padded
    with black to a square, so no anatomy is cropped away and nothing is distorted.
    """
    if isinstance(source, (str, Path)):
        is_dicom = is_dicom_file(Path(source))
    else:
        start = source.tell()
        is_dicom = has_dicom_preamble(source.read(PREAMBLE_END))
        source.seek(start)
    return _decode(source, img_size, dicom if is_dicom else None)


def _decode(source: str | Path | BinaryIO, img_size: int, dicom: DicomOptions | None) -> torch.Tensor:
    """Decode (as DICOM when ``dicom`` is given), pad to a square and resize."""
    try:
        img = dicom_to_image(source, dicom, MAX_PIXELS) if dicom is not None else _read_pil(source, img_size)
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL and pydicom raise many types for corrupt or truncated files
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from exc
    scale = img_size / max(img.size)
    new_size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new(img.mode, (img_size, img_size), 0)
    canvas.paste(img, ((img_size - new_size[0]) // 2, (img_size - new_size[1]) // 2))
    array = np.asarray(canvas, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _read_pil(source: str | Path | BinaryIO, img_size: int) -> Image.Image:
    with Image.open(source) as img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(f"{width}x{height} pixels is more than {MAX_PIXELS:,}")
        # JPEG can decode at a reduced scale directly: bounded memory for huge files.
        img.draft(img.mode, (img_size, img_size))
        img = ImageOps.exif_transpose(img)
        img = _to_8bit(img)
        img.load()
    return img


def perceptual_hash(image: torch.Tensor) -> int:
    """64-bit DCT hash (imagehash.phash) of a decoded image: near-identical images differ in few bits."""
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    return int(str(imagehash.phash(pil)), 16)


@dataclass
class ImageCache:
    """Decoded images by index; ``None`` entries are re-decoded on access (past the RAM budget)."""

    paths: list[Path]
    img_size: int
    images: list[torch.Tensor | None]
    dicom: DicomOptions = DicomOptions()

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> torch.Tensor:
        cached = self.images[index]
        return cached if cached is not None else decode_image(self.paths[index], self.img_size, self.dicom)


def read_and_decode(path: Path, img_size: int, dicom: DicomOptions = DicomOptions()) -> tuple[torch.Tensor, str]:
    """Decode ``path`` and hash its bytes (one read serves both); raises :class:`ImageDecodeError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror}") from exc
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    is_dicom = Path(path).suffix.lower() == DICOM_SUFFIX or has_dicom_preamble(data)
    image = _decode(io.BytesIO(data), img_size, dicom if is_dicom else None)
    return image, hashlib.sha1(data).hexdigest()


@dataclass
class DecodedImages:
    """Result of :func:`build_image_cache`: the cache of readable images, their content hashes and
    perceptual hashes, and ``(path, reason)`` for every unreadable file (the caller decides to skip or stop)."""

    cache: ImageCache
    hashes: list[str]
    phashes: list[int]
    failures: list[tuple[Path, str]]


def build_image_cache(paths: Sequence[Path], img_size: int, budget_mb: int, threads: int = 4,
                      dicom: DicomOptions = DicomOptions()) -> DecodedImages:
    """Decode every image once (in threads: PIL releases the GIL while decoding)."""
    budget = budget_mb * 2**20
    used = 0
    images: list[torch.Tensor | None] = []
    kept_paths: list[Path] = []
    hashes: list[str] = []
    phashes: list[int] = []
    failures: list[tuple[Path, str]] = []

    def decode(path: Path) -> tuple[torch.Tensor, str, int] | str:
        try:
            image, digest = read_and_decode(path, img_size, dicom)
        except ImageDecodeError as exc:
            return str(exc)
        return image, digest, perceptual_hash(image)  # in the worker thread too

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for path, result in zip(paths, pool.map(decode, paths)):
            if isinstance(result, str):
                failures.append((Path(path), result))
                continue
            result, digest, phash = result
            kept_paths.append(Path(path))
            hashes.append(digest)
            phashes.append(phash)
            if used + result.numel() <= budget:
                images.append(result)
                used += result.numel()
            else:
                images.append(None)
    cache = ImageCache(kept_paths, img_size, images, dicom)
    n_cached = sum(t is not None for t in images)
    log.info("Decoded %d images at %dx%d: %d cached in RAM (%.1f MiB), %d read from disk each time",
             len(kept_paths), img_size, img_size, n_cached, used / 2**20, len(kept_paths) - n_cached)
    return DecodedImages(cache, hashes, phashes, failures)


def describe_failures(failures: Sequence[tuple[object, str]], limit: int = 20) -> str:
    """``path (reason); ...`` for the first ``limit`` unreadable files, then how many more."""
    listed = "; ".join(f"{path} ({reason})" for path, reason in failures[:limit])
    return listed + (f" and {len(failures) - limit} more" if len(failures) > limit else "")


def duplicate_groups(paths: Sequence[Path], hashes: Sequence[str]) -> list[list[Path]]:
    """Groups of files with identical content (byte for byte), each group sorted."""
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path, digest in zip(paths, hashes):
        by_hash[digest].append(Path(path))
    return sorted(sorted(group) for group in by_hash.values() if len(group) > 1)


class CachedImageDataset(Dataset):
    """``(image, label, index)`` for the given cache indices; ``index`` maps predictions back to files.

    A key is a position in ``indices``, or ``(position, seed)`` from
    :class:`data.sampling.SeededSampler`: the augmentation then draws from a generator seeded
    with ``seed``, so a sample's augmentation depends only on the run's seed, the epoch and its
    place in the epoch — not on worker processes or where a resumed run restarted.
    """

    def __init__(self, cache: ImageCache, indices: Sequence[int], labels: Sequence[int],
                 augment: Callable[[torch.Tensor], torch.Tensor] | None,
                 to_input: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.cache = cache
        self.indices = list(indices)
        self.labels = labels
        self.augment = augment
        self.to_input = to_input

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        position, seed = key if isinstance(key, tuple) else (key, None)
        index = self.indices[position]
        image = self.cache.get(index)
        if self.augment is not None:
            image = self._augment(image, seed)
        return self.to_input(image), self.labels[index], index

    def _augment(self, image: torch.Tensor, seed: int | None) -> torch.Tensor:
        if seed is None:
            return self.augment(image)
        # torchvision's transforms draw from the global generator: fork it, so the seed stays local.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.augment(image)
