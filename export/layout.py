"""The bundle folder (MONAI's bundle layout) and how a reader checks it, torch-free:

    BUNDLE/
      configs/metadata.json   classes, class texts, input size and preprocessing, the run's CV
                              metrics with CIs, training commit and versions, operating point,
                              the SHA-256 of every model file
      models/model.onnx       image-only model, input "image" (N, 3, S, S) → "probabilities" (N, C)
      models/model.ts         the same model as TorchScript
      README.md               for the engineer who receives it
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.io import file_sha256, read_json

METADATA = Path("configs") / "metadata.json"
README = Path("README.md")
MODEL_FILES = {"onnx": Path("models") / "model.onnx", "torchscript": Path("models") / "model.ts"}
BUNDLE_PATHS = (METADATA, README, *MODEL_FILES.values())
FORMAT_VERSION = 1


class BundleError(UserError, ValueError):
    """A bundle folder that cannot be used: missing, altered, or not written by ``python -m export``."""


def read_metadata(bundle: Path) -> dict[str, Any]:
    """``configs/metadata.json`` of ``bundle``; a missing or foreign file is refused by name."""
    path = bundle / METADATA
    if not path.is_file():
        raise BundleError(f"{bundle} is not an exported bundle: it has no {METADATA.as_posix()}")
    try:
        metadata = read_json(path, "bundle metadata")
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} was not written by this version of python -m export "
                          f"(format_version {FORMAT_VERSION} expected)")
    return metadata


def verified_model(bundle: Path, metadata: dict[str, Any], fmt: str) -> Path:
    """The path of the ``fmt`` model file, after checking it against the SHA-256 in the metadata: a
    replaced or truncated model is refused before it classifies anything."""
    relative = MODEL_FILES[fmt]
    path = bundle / relative
    expected = metadata.get("files", {}).get(relative.as_posix())
    if expected is None or not path.is_file():
        raise BundleError(f"{bundle} has no {relative.as_posix()} (exported formats: "
                          f"{', '.join(metadata.get('formats', [])) or 'none'})")
    actual = file_sha256(path)
    if actual != expected:
        raise BundleError(f"{path} is not the exported model: its SHA-256 {actual[:12]}… differs from "
                          f"{expected[:12]}… in {METADATA.as_posix()} (replaced or truncated); export it again")
    return path
