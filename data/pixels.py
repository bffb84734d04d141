"""Image files → the model's input, with numpy, PIL and pydicom only (no torch).

The trainer (:mod:`data.images`, :mod:`data.transforms`) and the exported model's runner
(``python -m export.predict``) both decode through :func:`decode_pixels`, so a hospital's server
that has no torch feeds its model exactly the pixels training saw; :func:`normalise` is
:class:`data.transforms.ToModelInput` in numpy (tests/data/test_pixels.py holds them equal).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps

from data.dicom import PREAMBLE_END, DicomOptions, dicom_to_image, has_dicom_preamble, is_dicom_file

# ImageNet statistics: the pretrained backbones were trained on inputs normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def source_is_dicom(source: str | Path | BinaryIO) -> bool:
    """A ``.dcm`` path or any file whose preamble says DICOM (an open file is left where it was)."""
    if isinstance(source, (str, Path)):
        return is_dicom_file(Path(source))
    start = source.tell()
    is_dicom = has_dicom_preamble(source.read(PREAMBLE_END))
    source.seek(start)
    return is_dicom


def decode_pixels(source: str | Path | BinaryIO, img_size: int, dicom: DicomOptions | None) -> np.ndarray:
    """Decode (as DICOM when ``dicom`` is given) into uint8 (C, img_size, img_size), C = 1 for
    grayscale, 3 for colour.

    The whole image is kept: it is scaled so its longer side is ``img_size`` and padded
    with black to a square, so no anatomy is cropped away and nothing is distorted.
    """
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
    return array.transpose(2, 0, 1).copy()  # C-contiguous and writable (torch.from_numpy shares it)


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


def normalise(image: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) with C in {1, 3} → float32 (3, H, W): scaled to [0, 1], grayscale repeated on
    three channels, ImageNet mean and std (:class:`data.transforms.ToModelInput`'s float32 steps)."""
    x = image.astype(np.float32) / np.float32(255.0)
    if x.shape[0] == 1:  # grayscale radiograph: same intensity on all three channels
        x = np.broadcast_to(x, (3, *x.shape[1:]))
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


def describe_failures(failures: Sequence[tuple[object, str]], limit: int = 20) -> str:
    """``path (reason); ...`` for the first ``limit`` unreadable files, then how many more."""
    listed = "; ".join(f"{path} ({reason})" for path, reason in failures[:limit])
    return listed + (f" and {len(failures) - limit} more" if len(failures) > limit else "")


Decoded = TypeVar("Decoded")
DECODE_THREADS = 4  # PIL releases the GIL while decoding


def decode_in_batches(files: Sequence[tuple[Path, str]], decode: Callable[[Path], Decoded | str], batch_size: int,
                      failures: list[tuple[str, str]]) -> Iterator[tuple[list[str], list[Decoded]]]:
    """(names, decoded images) of ``files`` (path, name), ``batch_size`` at a time, decoded in threads;
    a file that ``decode`` cannot read (it returns the reason) goes to ``failures`` as (name, reason).
    predict.py and the exported model's runner read their images through this."""
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            names, decoded = [], []
            for (_, name), result in zip(chunk, pool.map(decode, [path for path, _ in chunk])):
                if isinstance(result, str):
                    failures.append((name, result))
                else:
                    names.append(name)
                    decoded.append(result)
            if decoded:
                yield names, decoded
