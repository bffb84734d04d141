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
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.dicom import DICOM_SUFFIX, DicomOptions, has_dicom_preamble
from data.pixels import ImageDecodeError, decode_pixels, source_is_dicom
from utils.logging_setup import get_logger

log = get_logger(__name__)


def decode_image(source: str | Path | BinaryIO, img_size: int, dicom: DicomOptions = DicomOptions()) -> torch.Tensor:
    """Read an image file (path or open binary file) into a uint8 tensor (C, img_size, img_size),
    C = 1 for grayscale, 3 for colour. DICOM files are recognised by their ``.dcm`` suffix or preamble;
    :func:`data.pixels.decode_pixels` pads to a square and resizes.
    """
    return torch.from_numpy(decode_pixels(source, img_size, dicom if source_is_dicom(source) else None))


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

    def channels(self) -> int:
        """1 when every image is grayscale, else 3 (also when an image past the RAM budget is not
        known): what a batch of uint8 images needs to stack (:class:`data.batch_transforms.ToChannels`)."""
        return 1 if all(image is not None and image.shape[0] == 1 for image in self.images) else 3

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
    image = torch.from_numpy(decode_pixels(io.BytesIO(data), img_size, dicom if is_dicom else None))
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
