"""A study's settings: the settings block of ``run_train_clip.sh``, then the environment, which wins.

The script hands its own block over as arguments (``NAME=VALUE``; an array as ``NAME=()`` and one
``NAME+=ITEM`` per item) and leaves the environment as it was given. Two kinds of settings:

- the runner's own (:data:`RUNNER_SETTINGS`: GPUS, JOBS_PER_GPU, IMAGE_ENCODERS, OUTPUT_ROOT, FORCE, ...);
- every other setting is a ``TrainConfig`` field in capitals, by one rule: ``WEIGHT_SMOOTH_FACTOR=0.5``
  → ``--weight-smooth-factor 0.5``, ``USE_CV=true`` → ``--use-cv`` (false: ``--no-use-cv``),
  ``USE_AMP=false`` → ``--no-amp``. Config-key aliases work as names too (``USE_AMP``, ``NO_AMP``).

An empty value means "not set". The fields the runner chooses for each job (output folder, log
file, GPU, resume/overwrite, the encoders) are not settings.
"""
from __future__ import annotations

import dataclasses
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from training.config import (KEY_ALIASES, NEGATED_KEYS, TrainConfig, config_fields, flag_of, opposite_flag_of,
                             with_alternatives)
from reporting.leaderboard import DEFAULT_METRIC, ranked_metric
from utils.errors import ConfigError, UserError, suggest
from utils.run_names import DEFAULT_LOG_DIR, DEFAULT_OUTPUT_ROOT

RUNNER_SETTINGS = ("GPUS", "GPUS_PER_JOB", "JOBS_PER_GPU", "IMAGE_ENCODERS", "TEXT_ENCODERS", "USE_MULTI_CONFIG", "CONFIG_FILE",
                   "OUTPUT_ROOT", "EXTRA_ARGS", "LOG_DIR", "LEADERBOARD_METRIC", "FORCE", "DRY_RUN", "PYTHON")
# TrainConfig fields the runner sets for each job itself.
CHOSEN_PER_JOB = frozenset({"output_dir", "log_file", "gpu_id", "resume", "overwrite", "image_encoder",
                            "text_encoder"})
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")

Raw = dict[str, str | list[str]]  # a value, or the items of an array


@dataclass(frozen=True)
class TrainerSetting:
    """A setting that becomes a train_clip.py flag: which field, and whether the name negates it."""

    field: dataclasses.Field
    negated: bool = False


def trainer_settings() -> dict[str, TrainerSetting]:
    """Setting name → field: every field in capitals, and the config-key aliases in capitals."""
    fields = {f.name: f for f in config_fields() if f.name not in CHOSEN_PER_JOB}
    names = {name.upper(): TrainerSetting(f) for name, f in fields.items()}
    names.update({alias.upper(): TrainerSetting(fields[target]) for alias, target in KEY_ALIASES.items()
                  if target in fields})
    names.update({key.upper(): TrainerSetting(fields[target], negated=True)
                  for key, target in NEGATED_KEYS.items() if target in fields})
    return names


@dataclass(frozen=True)
class Settings:
    """Everything a study needs, checked. ``trainer_values`` maps field names to their values: a
    bool for a switch, else the text as written (checked against the field's type)."""

    gpus: tuple[int, ...] = (0,)
    gpus_per_job: int = 1  # more than one: torchrun jobs on groups of GPUS
    jobs_per_gpu: int = 1  # jobs at once on each GPU (or group of GPUS_PER_JOB)
    image_encoders: tuple[str, ...] = ()
    text_encoders: tuple[str, ...] = ()
    use_multi_config: bool = False
    config_file: Path = Path("train_clip_config.json")
    output_root: Path = DEFAULT_OUTPUT_ROOT
    extra_args: tuple[str, ...] = ()
    log_dir: Path = DEFAULT_LOG_DIR
    leaderboard_metric: str = DEFAULT_METRIC
    force: bool = False
    dry_run: bool = False
    trainer_values: Mapping[str, Any] = field(default_factory=dict)
    from_environment: tuple[str, ...] = ()
    force_cpu: bool = False  # DRIVER_FORCE_CPU: the GPU schedule, but every job sees no CUDA
    poll_seconds: float = 1.0  # DRIVER_POLL_SECONDS

    def trainer_flags(self, leave_out: frozenset[str] = frozenset()) -> list[str]:
        """train_clip.py flags for the trainer settings, except the fields in ``leave_out``."""
        flags: list[str] = []
        for f in config_fields():
            if f.name not in self.trainer_values or f.name in leave_out:
                continue
            value = self.trainer_values[f.name]
            if isinstance(value, bool):
                # A negating field's own flag switches it off (--no-amp), its opposite on (--amp).
                flags.append(flag_of(f) if value != f.metadata["negate"] else opposite_flag_of(f))
            elif isinstance(value, list):  # a list field: its flag once per item
                flags += [word for item in value for word in (flag_of(f), item)]
            else:
                flags += [flag_of(f), str(value)]
        return flags


# ---------------------------------------------------------------------------------------------
# Raw values: the script's block, then the environment
# ---------------------------------------------------------------------------------------------
def parse_block_arguments(arguments: Sequence[str]) -> Raw:
    """``NAME=VALUE``, ``NAME=()`` and ``NAME+=ITEM`` words (as the script writes them) → values."""
    values: Raw = {}
    for word in arguments:
        name, sep, value = word.partition("=")
        if not sep:
            raise ConfigError(f"not a setting: '{word}' (expected NAME=VALUE)")
        if name.endswith("+"):
            items = values.setdefault(name[:-1], [])
            if not isinstance(items, list):
                raise ConfigError(f"setting {name[:-1]}: a value and array items mixed")
            items.append(value)
        else:
            values[name] = [] if value == "()" else value
    return values


def known_names() -> list[str]:
    return list(RUNNER_SETTINGS) + list(trainer_settings())


def check_block_names(block: Raw) -> None:
    """A name in the settings block that is no setting is a typo: say so, with the closest name."""
    known = known_names()
    chosen = {name.upper() for name in CHOSEN_PER_JOB}
    for name in block:
        if name in chosen:
            raise ConfigError(f"{name} in run_train_clip.sh: the study runner chooses it for each job "
                              "(GPUS, IMAGE_ENCODERS, TEXT_ENCODERS, OUTPUT_ROOT, LOG_DIR, FORCE)")
        if name not in known:
            raise ConfigError(f"{name} in run_train_clip.sh is not a setting{suggest(name, known)}; "
                              "settings are train_clip.py flags in capitals and the runner's own (see --help)")


def merge(block: Raw, environ: Mapping[str, str]) -> tuple[Raw, tuple[str, ...]]:
    """The block's values with the environment's on top; also the names the environment gave.

    A setting the environment gives replaces the block's alternatives too (DATA_CSV=... replaces the
    block's DATA_DIR: a run reads one or the other).
    """
    given = tuple(name for name in known_names() if name in environ)
    replaced = {name.upper() for name in with_alternatives(frozenset(n.lower() for n in given if environ[n]))}
    kept = {name: value for name, value in block.items() if name not in replaced - set(given)}
    return {**kept, **{name: environ[name] for name in given}}, given


# ---------------------------------------------------------------------------------------------
# Typed values
# ---------------------------------------------------------------------------------------------
def parse_bool(name: str, value: str) -> bool:
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be true or false, got '{value}'")


def parse_words(name: str, value: str | list[str]) -> list[str]:
    """An array setting: items as given in the file; from the environment, space-separated words
    (EXTRA_ARGS split like a shell would, by shlex: nothing in it is executed)."""
    if isinstance(value, list):
        return value
    if name != "EXTRA_ARGS":
        return value.split()
    try:
        return shlex.split(value)
    except ValueError:
        raise ConfigError(f"EXTRA_ARGS: cannot split '{value}' into words (unbalanced quotes?)") from None


def parse_trainer_value(name: str, setting: TrainerSetting, value: str) -> Any:
    tp = typing.get_type_hints(TrainConfig)[setting.field.name]
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    if base is bool:
        return parse_bool(name, value) != setting.negated
    try:
        base(value)
    except ValueError:
        kind = "a whole number" if base is int else "a number"
        raise ConfigError(f"{name} must be {kind}, got '{value}'") from None
    return value  # as written (1e-4 stays 1e-4 in the commands shown)


def is_list_setting(setting: TrainerSetting) -> bool:
    tp = typing.get_type_hints(TrainConfig)[setting.field.name]
    return any(typing.get_origin(a) is list for a in typing.get_args(tp))


def parse_trainer_values(raw: Raw) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, setting in trainer_settings().items():
        if is_list_setting(setting):
            # An array in the block (TEXT_TEMPLATE+="..." per item); from the environment one value is
            # one item (a template has spaces, so it is not split into words).
            items = raw.get(name, [])
            items = [item for item in ([items] if isinstance(items, str) else items) if item]
            if items:
                values[setting.field.name] = items
            continue
        value = scalar(raw, name, "")
        if value:  # empty: not set (the trainer's default, or the config entry's value)
            values[setting.field.name] = parse_trainer_value(name, setting, value)
    return values


def parse_gpus(words: list[str]) -> tuple[int, ...]:
    if not words:
        raise ConfigError("GPUS is empty: list at least one GPU index, e.g. GPUS=(0)")
    for word in words:
        if not word.isdigit():
            raise ConfigError(f"GPUS: '{word}' is not a GPU index (0, 1, ...)")
    return tuple(int(word) for word in words)


def parse_count(name: str, value: str, what: str) -> int:
    """A whole number of ``what``, 1 or more (GPUS_PER_JOB, JOBS_PER_GPU)."""
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name} must be a whole number of {what}, 1 or more, got '{value}'")
    return int(value)


def scalar(raw: Raw, name: str, default: str) -> str:
    """A one-value setting; unset or empty: ``default``."""
    value = raw.get(name)
    if isinstance(value, list):
        raise ConfigError(f"{name} takes one value, not an array")
    return value or default


def required_path(raw: Raw, name: str, default: Path) -> Path:
    """A folder or file setting: unset means the default, but an empty one is a mistake."""
    if name in raw and not scalar(raw, name, ""):
        raise ConfigError(f"{name} is empty")
    return Path(scalar(raw, name, str(default)))


def parse_metric(value: str) -> str:
    try:
        ranked_metric(value)
    except UserError as exc:
        raise ConfigError(f"LEADERBOARD_METRIC: {exc}") from None
    return value


def read_settings(block_arguments: Sequence[str], environ: Mapping[str, str], dry_run: bool = False) -> Settings:
    """The checked settings of a study (``dry_run``: the command line's --dry-run)."""
    block = parse_block_arguments(block_arguments)
    check_block_names(block)
    raw, given = merge(block, environ)
    defaults = Settings()
    return Settings(
        gpus=parse_gpus(parse_words("GPUS", raw["GPUS"])) if "GPUS" in raw else defaults.gpus,
        gpus_per_job=parse_count("GPUS_PER_JOB", scalar(raw, "GPUS_PER_JOB", "1"), "GPUs"),
        jobs_per_gpu=parse_count("JOBS_PER_GPU", scalar(raw, "JOBS_PER_GPU", "1"), "jobs"),
        image_encoders=tuple(parse_words("IMAGE_ENCODERS", raw.get("IMAGE_ENCODERS", ""))),
        text_encoders=tuple(parse_words("TEXT_ENCODERS", raw.get("TEXT_ENCODERS", ""))),
        use_multi_config=parse_bool("USE_MULTI_CONFIG", scalar(raw, "USE_MULTI_CONFIG", "false")),
        config_file=required_path(raw, "CONFIG_FILE", defaults.config_file),
        output_root=required_path(raw, "OUTPUT_ROOT", defaults.output_root),
        extra_args=tuple(parse_words("EXTRA_ARGS", raw.get("EXTRA_ARGS", ""))),
        log_dir=required_path(raw, "LOG_DIR", defaults.log_dir),
        leaderboard_metric=parse_metric(scalar(raw, "LEADERBOARD_METRIC", DEFAULT_METRIC)),
        force=parse_bool("FORCE", scalar(raw, "FORCE", "false")),
        dry_run=dry_run or parse_bool("DRY_RUN", scalar(raw, "DRY_RUN", "false")),
        trainer_values=parse_trainer_values(raw),
        from_environment=given,
        force_cpu=parse_bool("DRIVER_FORCE_CPU", environ.get("DRIVER_FORCE_CPU") or "false"),
        poll_seconds=parse_poll_seconds(environ.get("DRIVER_POLL_SECONDS") or "1"),
    )


def parse_poll_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"DRIVER_POLL_SECONDS must be a positive number of seconds, got '{value}'")
    return seconds


def describe_raw(block_arguments: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """``NAME=value`` lines of the settings as they stand (for --help), unchecked."""
    raw, _ = merge(parse_block_arguments(block_arguments), environ)
    lines = []
    for name, value in raw.items():
        shown = "(" + " ".join(shlex.quote(v) for v in value) + ")" if isinstance(value, list) else \
            shlex.quote(value)
        lines.append(f"  {name}={shown}")
    return lines
