"""Where pretrained weights come from, in one order for every encoder.

1. an explicit path (``--image-weights FILE``, ``--text-weights FILE_OR_DIR``);
2. the library's own cache: ``$TORCH_HOME/hub/checkpoints`` for torchvision (and timm/open_clip
   files fetched by URL), the HuggingFace hub cache (``$HF_HOME/hub``) for timm, open_clip and
   transformers files hosted on the hub;
3. a download into that same cache, unless ``HF_HUB_OFFLINE=1`` (then no download is tried at
   all, by any library, so an air-gapped server fails at once instead of waiting on timeouts).

When none gives the weights, :func:`weights_not_found` builds the one error message: the encoder,
the places looked in, and the ``python -m models.download`` command that fills the cache.
``models.download`` runs this same code with downloads on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.names import EncoderSource, WeightsNotFoundError

OFFLINE_VALUES = ("1", "true", "yes", "on")


def downloads_disabled() -> bool:
    """``HF_HUB_OFFLINE=1``: read the caches only, never the network (HuggingFace's own switch)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def torch_hub_dir() -> Path:
    """``$TORCH_HOME/hub`` (read at call time, as torch does)."""
    return Path(torch.hub.get_dir())


def hf_hub_cache() -> Path:
    """The HuggingFace hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), read at call time."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@dataclass(frozen=True)
class WeightsLocation:
    """Where a library keeps one weights file.

    Either a ``url`` (cached as ``$TORCH_HOME/hub/checkpoints/<file name>``, where torch.hub,
    torchvision and timm look), or a HuggingFace ``repo`` with candidate ``filenames`` (preferred
    first) cached in the HuggingFace hub cache.
    """

    url: str | None = None
    repo: str | None = None
    filenames: tuple[str, ...] = ()

    def url_cache_file(self) -> Path:
        assert self.url is not None
        return torch_hub_dir() / "checkpoints" / self.url.rsplit("/", 1)[-1]

    def describe(self) -> str:
        """Where this file would be in the cache, for error messages and the encoder table."""
        if self.repo is not None:
            return f"HuggingFace cache {hf_hub_cache()} (repo {self.repo}, file {' or '.join(self.filenames)})"
        return f"TORCH_HOME cache {self.url_cache_file()}"

    def cached(self) -> Path | None:
        """The cached file, or None when it is not in the cache."""
        if self.repo is not None:
            from huggingface_hub import try_to_load_from_cache

            for filename in self.filenames:
                found = try_to_load_from_cache(self.repo, filename, cache_dir=hf_hub_cache())
                if isinstance(found, str):
                    return Path(found)
            return None
        path = self.url_cache_file()
        return path if path.is_file() else None

    def download(self) -> Path:
        """Fetch the file into the cache (network errors propagate)."""
        if self.repo is not None:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            for filename in self.filenames[:-1]:
                try:
                    return Path(hf_hub_download(self.repo, filename, cache_dir=hf_hub_cache()))
                except EntryNotFoundError:
                    continue  # the repo has the next candidate instead (e.g. .bin, no .safetensors)
            return Path(hf_hub_download(self.repo, self.filenames[-1], cache_dir=hf_hub_cache()))
        target = self.url_cache_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(self.url, str(target), progress=False)
        return target


HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def hf_weights_location(source: EncoderSource) -> WeightsLocation | None:
    """Where a hub model's weights sit in the HuggingFace cache (None: a local folder); the same for a
    HuggingFace text encoder and the transformers-built CLIP models (``cn-clip:``, ``siglip:``)."""
    if Path(source.model).is_dir():
        return None
    return WeightsLocation(repo=source.model, filenames=HF_WEIGHT_FILES)


def download_command(name: str) -> str:
    return f"python -m models.download {name}"


def weights_not_found(flag: str, name: str, looked_in: list[str], download_note: str,
                      weights_flag: str) -> WeightsNotFoundError:
    """The one-line error for weights that cannot be had (no silent random init)."""
    return WeightsNotFoundError(
        f"{flag} {name}: pretrained weights not found; looked in: {'; '.join(looked_in)}; "
        f"{download_note}. On a machine with internet run '{download_command(name)}' and copy the "
        f"cache folder to this server (see docs/encoders.md), or pass {weights_flag} PATH")


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def download_note(error: Exception | None) -> str:
    if error is None:
        return "download not tried (HF_HUB_OFFLINE=1)"
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"download failed ({type(error).__name__}{': ' + reason if reason else ''})"


def fetch_weights_file(location: WeightsLocation | None, flag: str, name: str, weights_flag: str,
                       explicit: str | os.PathLike | None = None) -> Path:
    """Explicit path, else the cache, else a download; a :class:`WeightsNotFoundError` otherwise.

    ``location`` None: the library publishes no weights for this encoder (only ``explicit`` helps).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsNotFoundError(f"{weights_flag} {path}: no such file")
        return path
    if location is None:
        raise WeightsNotFoundError(f"{flag} {name}: no pretrained weights are published for it; "
                                   f"pass your own with {weights_flag} PATH")
    cached = location.cached()
    if cached is not None:
        return cached
    error: Exception | None = None
    if not downloads_disabled():
        try:
            return location.download()
        except Exception as exc:  # URLError, HTTPError, hub errors, OSError: the network said no
            error = exc
    raise weights_not_found(flag, name, [location.describe()], download_note(error), weights_flag)


def read_state_dict(path: Path, flag: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (safetensors, or a torch pickle read with ``weights_only=True``).

    A checkpoint that wraps its weights (``{"state_dict": ...}`` or ``{"model": ...}``) is
    unwrapped, and DataParallel's ``module.`` prefix is dropped.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors all mean "not a weights file"
        raise WeightsNotFoundError(f"{flag} {path}: not a readable weights file ({type(exc).__name__}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"{flag} {path}: expected a dict of tensors (a state dict)")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def incompatible_weights(flag: str, path: Path, name: str, exc: Exception) -> WeightsNotFoundError:
    first = str(exc).strip().splitlines()
    detail = " ".join(line.strip() for line in first[:3])[:300]
    return WeightsNotFoundError(f"{flag} {path}: these weights do not fit encoder '{name}' ({detail})")


def hf_from_pretrained(loader: Any, target: str, flag: str, name: str, weights_flag: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` of a transformers class: a local folder, else the HuggingFace cache,
    else a download; a :class:`WeightsNotFoundError` naming ``flag`` otherwise."""
    if Path(target).is_dir():
        try:
            return loader.from_pretrained(target, **kwargs)
        except OSError as exc:
            raise WeightsNotFoundError(f"{flag} {name}: cannot load the HuggingFace model folder {target} "
                                       f"({first_line(exc)})") from exc
    cache = str(hf_hub_cache())
    try:
        return loader.from_pretrained(target, cache_dir=cache, local_files_only=True, **kwargs)
    except OSError:
        pass  # not (completely) in the cache
    error: Exception | None = None
    if not downloads_disabled():
        try:
            return loader.from_pretrained(target, cache_dir=cache, **kwargs)
        except OSError as exc:
            error = exc
    raise weights_not_found(flag, name, [f"HuggingFace cache {cache} (repo {target})"], download_note(error),
                            weights_flag)
