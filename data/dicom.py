"""DICOM radiographs → 8-bit images, with pydicom (docs/design.md §10).

Stored values go through the modality LUT (RescaleSlope/Intercept) and the VOI LUT or window
(``--dicom-window``), then are stretched to 0..255; MONOCHROME1 is inverted so bone is bright as in
MONOCHROME2. Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) decode through the
pylibjpeg and GDCM plug-ins that pydicom finds on its own once they are installed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from utils.errors import UserError

DICOM_SUFFIX = ".dcm"
PREAMBLE_END = 132  # a DICOM file: 128 bytes of preamble, then b"DICM"
WINDOW_PATTERN = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*,\s*(\d+(?:\.\d*)?)\s*$")


class DicomError(ValueError):
    """A DICOM file that holds no image we can use (the caller reports it as unreadable)."""


class DicomWindowError(UserError, ValueError):
    """--dicom-window is neither auto, none nor CENTER,WIDTH."""


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM pixels become an image: ``window`` is ``auto`` (the file's VOI LUT or first window,
    if any), ``none`` (the full range) or ``C,W``; ``first_frame`` uses frame 0 of a multi-frame file
    instead of refusing it."""

    window: str = "auto"
    first_frame: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DicomOptions:
        """The options a run was trained with, from its ``config.json``."""
        return cls(config["dicom_window"], config["dicom_first_frame"])


def parse_window(text: str) -> tuple[float, float] | None:
    """``C,W`` → (center, width) with width ≥ 1; None for any other text."""
    match = WINDOW_PATTERN.match(text)
    if match is None or float(match.group(2)) < 1:
        return None
    return float(match.group(1)), float(match.group(2))


def check_window(text: str) -> None:
    if text not in ("auto", "none") and parse_window(text) is None:
        raise DicomWindowError(f"--dicom-window must be auto, none or CENTER,WIDTH with WIDTH >= 1 (e.g. "
                               f"300,1500), got {text!r}")


def has_dicom_preamble(head: bytes) -> bool:
    return head[128:PREAMBLE_END] == b"DICM"


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or any file whose bytes 128..131 are ``DICM`` (PACS exports often have no suffix)."""
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    try:
        with path.open("rb") as handle:
            return has_dicom_preamble(handle.read(PREAMBLE_END))
    except OSError:
        return False


def read_patient_id(path: Path) -> str | None:
    """The file's PatientID, or None when it is not DICOM or has none."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # pydicom raises many types for files that are not DICOM
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def dicom_to_image(source: str | Path | BinaryIO, options: DicomOptions, max_pixels: int) -> Image.Image:
    """Decode a DICOM file into an 8-bit ``L`` (grayscale) or ``RGB`` image."""
    ds = pydicom.dcmread(source, force=True)
    if "PixelData" not in ds:
        raise DicomError("DICOM file without pixel data")
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns > max_pixels:
        raise DicomError(f"{columns}x{rows} pixels is more than {max_pixels:,}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and not options.first_frame:
        raise DicomError(f"multi-frame DICOM ({frames} frames); --dicom-first-frame uses frame 0")
    pixels = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "PALETTE COLOR":
        return Image.fromarray(_stretch(apply_color_lut(pixels, ds)), mode="RGB")
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom converts YBR_* to RGB while decoding.
        return Image.fromarray(_stretch(pixels), mode="RGB")
    gray = _stretch(_apply_window(apply_modality_lut(pixels, ds), ds, options.window))
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def _apply_window(values: np.ndarray, ds: pydicom.Dataset, window: str) -> np.ndarray:
    if window == "none":
        return values
    chosen = parse_window(window)
    if chosen is not None:
        ds = pydicom.Dataset(ds)  # a shallow copy: the user's window, not the file's
        ds.WindowCenter, ds.WindowWidth = chosen
        return apply_voi_lut(values, ds, index=0, prefer_lut=False)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        return apply_voi_lut(values, ds, index=0)
    return values


def _stretch(values: np.ndarray) -> np.ndarray:
    """Any numeric range → uint8 0..255 over the values' actual range (flat images become black)."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)
