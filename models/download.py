"""``python -m models.download NAME [NAME ...]``: fetch encoders' pretrained weights into the caches
that training reads, on a machine with internet, so that those cache folders can be copied to a
server without one.

Image encoders: the weights file goes where the trainer looks (``$TORCH_HOME/hub/checkpoints`` for
torchvision, the HuggingFace cache for timm). Text encoders are built exactly as training builds
them, which fetches weights, configuration and tokenizer files into the HuggingFace cache. A CLIP
name (``clip:...``, ``cn-clip:...``, ``siglip:...``) fetches the whole model, so it serves both ``--image-encoder``
and ``--text-encoder``. Both
use the trainer's own resolution code (:mod:`models.weights`), so what is fetched here is what
training finds later.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from models.image_encoders import IMAGE_ENCODERS, image_encoder_spec, image_weights_file
from models.names import UnknownEncoderError, WeightsNotFoundError, split_suffix, unknown_encoder
from models.families import IMAGE, TIMM, family_of, is_clip_name
from models.text_encoders import build_text_encoder, resolve_text_encoder, text_weights_location, \
    valid_text_encoder_names
from models.weights import downloads_disabled, hf_hub_cache, torch_hub_dir
from utils.errors import UserError


def is_image_encoder(base: str) -> bool:
    return base in IMAGE_ENCODERS or family_of(base, IMAGE) is TIMM


def check_name(name: str) -> None:
    """Fail before any download on a name that is unknown or has no weights to fetch."""
    base = split_suffix(name).base
    if is_image_encoder(base):
        spec = image_encoder_spec(base)
        if spec.weights_location() is None:
            raise WeightsNotFoundError(f"{name}: no pretrained weights are published for '{spec.name}'")
        return
    try:
        resolve_text_encoder(name)
    except UnknownEncoderError:
        if is_clip_name(base):
            raise  # its own message says what is wrong with the CLIP name (e.g. cn-clip:RN50)
        raise unknown_encoder("image or text", "models.download", base,
                              list(IMAGE_ENCODERS) + valid_text_encoder_names()) from None


def fetch(name: str) -> Path:
    """Fetch what training needs for ``name``; returns the cached weights file."""
    base = split_suffix(name).base
    if is_image_encoder(base):
        return image_weights_file(image_encoder_spec(base), name)
    build_text_encoder(name)  # the trainer's own loading: weights, config and tokenizer files
    location = text_weights_location(resolve_text_encoder(name))
    cached = location.cached() if location is not None else None
    if cached is None:  # a local folder, or a :scratch name (configuration and tokenizer only)
        return hf_hub_cache()
    return cached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.download",
        description="Fetch the pretrained weights of the named encoders into the caches that train_clip.py "
                    "reads (TORCH_HOME for torchvision, the HuggingFace cache for timm, open_clip and "
                    "transformers), so the cache folders can be copied to a server without internet.",
        epilog="Example: python -m models.download resnet50 starnet_s1 clip:ViT-B/32 cn-clip:ViT-B/16 "
               "bert-base-chinese")
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="Encoder names as given to --image-encoder / --text-encoder (see "
                             "'train_clip.py --list-encoders').")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    names = build_parser().parse_args(argv).names
    if downloads_disabled():
        print("error: HF_HUB_OFFLINE=1 is set, so nothing can be downloaded; unset it (on a machine with "
              "internet) and run again", file=sys.stderr)
        return 2
    try:
        for name in names:
            check_name(name)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        try:
            print(f"{name}: {fetch(name)}")
        except WeightsNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    print(f"\nCaches: TORCH_HOME={torch_hub_dir().parent}  HuggingFace hub cache={hf_hub_cache()}\n"
          "Copy them to the same places on the offline server (or point TORCH_HOME / HF_HOME there) and "
          "train with HF_HUB_OFFLINE=1.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
