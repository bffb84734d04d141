"""A run's configuration read from the command line, one JSON config entry and, for ``--resume``,
the run's own saved ``config.json``.

Precedence (docs/design.md §7): dataclass defaults < one JSON config entry < explicit CLI flags;
a resumed run starts from its saved configuration, and explicit values that change results must
agree with it.
"""
from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any, Sequence

from training.config import (GROUPS, NON_RESULT_KEYS, TrainConfig, base_type, config_fields, field_types, flag_of,
                             normalise_keys, opposite_flag_of, validate)
from utils.errors import ConfigError, suggest
from utils.io import read_json
from utils.run_dir import RunDir


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises a one-line :class:`ConfigError` instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            unknown = next((word for word in message.split()[2:] if word.startswith("--")), None)
            if unknown is not None:
                hint = suggest(unknown.split("=", 1)[0], list(self._option_string_actions))
        raise ConfigError(f"{message}{hint}; see --help")


def build_parser() -> argparse.ArgumentParser:
    """The CLI, generated from :class:`TrainConfig` so flags and config keys cannot drift apart.

    Defaults are suppressed in the namespace so that only flags the user typed override the
    JSON config; help texts show the real defaults.
    """
    parser = _ArgumentParser(
        prog="train_clip.py",
        description="Fine-tune a CLIP-style image-text model to classify images in one folder per "
                    "class, with K-fold cross-validation.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Precedence: defaults < --config entry < flags given on the command line. Every on/off "
               "flag has an opposite that undoes a config file's setting: --no-use-cv, --amp, "
               "--save-best, --no-freeze-text, ...",
        allow_abbrev=False,  # '--epoch 5' must not silently mean --epochs
    )
    parser.add_argument("--config", metavar="FILE", help="JSON config: one object, or a list of objects "
                        "with snake_case flag names as keys.")
    parser.add_argument("--config-index", type=int, metavar="N",
                        help="Which entry of a --config list to run (0-based; default 0 for a one-entry list).")
    parser.add_argument("--list-encoders", action="store_true",
                        help="Print the image and text encoders (parameters, feature dimension, whether "
                             "pretrained weights are cached) and exit.")
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    types = field_types()
    for f in config_fields():
        group = groups[f.metadata["group"]]
        base = base_type(types[f.name])
        help_text = f.metadata["help"]
        if base is bool:
            negate = f.metadata["negate"]
            group.add_argument(flag_of(f), dest=f.name, action="store_false" if negate else "store_true",
                               help=help_text)
            # The opposite switch, so a command line can undo a config file's setting.
            group.add_argument(opposite_flag_of(f), dest=f.name, action="store_true" if negate else "store_false",
                               help=argparse.SUPPRESS)
            continue
        if base is list:  # given several times: one item each (the command line replaces a config's list)
            group.add_argument(flag_of(f), dest=f.name, action="append", metavar=f.name.upper(), help=help_text)
            continue
        default = "" if f.default is None else f" (default: {f.default})"
        # Choices are checked in validate(), which suggests the closest one (argparse does not).
        choices = f.metadata["choices"]
        group.add_argument(flag_of(f), dest=f.name, type=base,
                           metavar="{" + ",".join(choices) + "}" if choices else f.name.upper(),
                           help=help_text + default)
    return parser


def load_config_entry(path: str | Path, index: int | None) -> dict[str, Any]:
    """One entry of a JSON config file (an object, or a list of objects)."""
    data = read_json(path, "--config file")
    if isinstance(data, dict):
        entries = [data]
    elif isinstance(data, list) and data and all(isinstance(e, dict) for e in data):
        entries = data
    else:
        raise ConfigError(f"--config file {path} must hold an object or a non-empty list of objects")
    if index is None:
        if len(entries) > 1:
            raise ConfigError(f"--config file {path} holds {len(entries)} configs: choose one with "
                              f"--config-index 0..{len(entries) - 1}")
        index = 0
    if not 0 <= index < len(entries):
        raise ConfigError(f"--config-index {index} is out of range: {path} holds {len(entries)} configs "
                          f"(0..{len(entries) - 1})")
    return entries[index]


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line (and the --config file it names) into a validated config."""
    parser = build_parser()
    namespace = vars(parser.parse_args(argv))
    config_file = namespace.pop("config", None)
    config_index = namespace.pop("config_index", None)
    namespace.pop("list_encoders", None)  # handled by train_clip.main before any config
    values: dict[str, Any] = {}
    if config_file is not None:
        source = f"--config file {config_file}"
        values.update(normalise_keys(load_config_entry(config_file, config_index), source))
    elif config_index is not None:
        raise ConfigError("--config-index needs --config FILE")
    values.update(namespace)
    if values.get("resume"):
        values = merge_with_saved_run(values)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def merge_with_saved_run(values: dict[str, Any]) -> dict[str, Any]:
    """For ``--resume``: the saved ``config.json`` is the base; explicit values that change results
    must agree with it (the error names every differing key)."""
    output_dir = TrainConfig(**values).resolved_output_dir()
    saved_path = RunDir(output_dir).config
    if not saved_path.is_file():
        raise ConfigError(f"--resume: {output_dir} holds no config.json, so there is no run to resume")
    saved_entry = read_json(saved_path, "saved config")
    if not isinstance(saved_entry, dict):
        raise ConfigError(f"--resume: {saved_path} does not hold a config object")
    saved = normalise_keys(saved_entry, str(saved_path))
    differing = [key for key, value in values.items()
                 if key not in NON_RESULT_KEYS and key in saved and saved[key] != value]
    if differing:
        details = ", ".join(f"{key} (run: {saved[key]!r}, now: {values[key]!r})" for key in differing)
        raise ConfigError(f"--resume refused: the run in {output_dir} was started with other settings: "
                          f"{details}; start a new run (another --output-dir or --overwrite) instead")
    carried = {key: value for key, value in saved.items() if key not in ("overwrite", "resume", "log_file")}
    return {**carried, **values}
