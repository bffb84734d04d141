"""The run configuration: one dataclass, the CLI built from it, JSON merging and validation.

Precedence (docs/design.md §7): dataclass defaults < one JSON config entry < explicit CLI flags.
JSON keys are the flag names in snake_case. Every problem is a :class:`ConfigError` whose
message names the flag or key and, for a misspelt name, suggests the closest valid one.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from reporting.metric_table import MONITOR_METRICS
from utils.errors import ConfigError, suggest
from utils.io import read_json
from utils.run_dir import RunDir
from utils.run_names import default_run_dir

GROUPS = {"data": "data", "model": "model", "training": "training", "cv": "cross-validation",
          "imbalance": "class imbalance", "statistics": "statistics", "report": "report", "system": "system"}


def _opt(default: Any, help: str, group: str, *, choices: Sequence[str] | None = None,
         flag: str | None = None, negate: bool = False) -> Any:
    """A dataclass field with what the CLI needs to expose it.

    ``negate`` marks a True-by-default boolean that the CLI switches off with ``flag``
    (``amp`` ↔ ``--no-amp``).
    """
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices else None,
            "flag": flag, "negate": negate}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every parameter of a training run, with its default (see README for the full story)."""

    # data
    data_dir: Optional[str] = _opt(None, "Folder with one sub-folder of images per class.", "data")
    data_csv: Optional[str] = _opt(None, "CSV manifest with the columns path,label[,group] (paths relative to "
                                   "the CSV's folder, or absolute); instead of --data-dir.", "data")
    dicom_window: str = _opt("auto", "DICOM grey-level window: auto (the file's VOI LUT or first window), none "
                             "(the full range) or C,W (center,width).", "data")
    dicom_first_frame: bool = _opt(False, "Use frame 0 of a multi-frame DICOM instead of skipping it as "
                                   "unreadable.", "data")
    leakage_check: str = _opt("on", "Warn about near-duplicate images on the training and validation sides of "
                              "a fold (perceptual hashes).", "data", choices=("on", "off"))
    class_texts_file: Optional[str] = _opt(
        None, "JSON file mapping each class name to a description or a list of descriptions.", "data")
    text_template: Optional[list[str]] = _opt(
        None, "Prompt template with {class_name}, e.g. 'an X-ray of {class_name}'; give it several times (a "
        "list in JSON) for prompt ensembling: every class averages its --class-texts-file descriptions and all "
        "templates.", "data")
    img_size: int = _opt(224, "Square input size in pixels.", "data")
    augmentation: str = _opt("standard", "Training augmentation (none: resize only; minimal: small "
                             "shifts/rotations; standard: crop, flip, rotation, brightness/contrast).",
                             "data", choices=("none", "minimal", "standard"))
    strict_images: bool = _opt(False, "Stop on an unreadable image instead of skipping it with a warning.",
                               "data")
    cache_mb: int = _opt(4096, "RAM budget (MiB) for decoded images; beyond it images are re-read "
                         "from disk.", "data")
    # model
    image_encoder: str = _opt("resnet18", "Image encoder name (see --list-encoders; timm:<model> for any timm "
                              "model); add ':pretrained' for ImageNet weights. clip:<model> and cn-clip:<model> "
                              "are CLIP image towers (pretrained unless ':scratch'); with the same --text-encoder "
                              "the model keeps that CLIP's projections.", "model")
    text_encoder: str = _opt("clip:ViT-B/32", "Text encoder: clip:<model>, clip:hf-hub:<repo>, cn-clip:<model>, "
                             "a HuggingFace name, or hf:<name or folder>; add ':scratch' for random weights.",
                             "model")
    image_weights: Optional[str] = _opt(
        None, "Weights file for the image encoder (a state dict: .pth/.pt/.bin/.safetensors; for clip:* as "
        "--text-weights, for cn-clip:* a model folder); taken before the library caches and downloads "
        "(see docs/encoders.md).", "model")
    text_weights: Optional[str] = _opt(
        None, "Weights for the text encoder: for clip:* a weights file (or a folder holding one); for "
        "HuggingFace encoders a model folder.", "model")
    embed_dim: int = _opt(512, "Dimension of the shared image-text embedding (unused for paired CLIP towers: "
                          "they keep their CLIP's own).", "model")
    temperature: float = _opt(0.07, "Initial softmax temperature (the learnable logit scale starts at "
                              "1/temperature).", "model")
    freeze_image: bool = _opt(False, "Keep the image backbone's weights fixed (only its projection trains).",
                              "model")
    freeze_text: bool = _opt(False, "Keep the text encoder's weights fixed; class texts are then encoded "
                             "once per fold.", "model")
    loss: str = _opt("symmetric", "symmetric: image->class plus class->image contrastive loss; "
                     "ce: image->class cross-entropy only.", "model", choices=("symmetric", "ce"))
    # training
    batch_size: int = _opt(32, "Images per training step; under torchrun the global batch, shared evenly by "
                           "the processes.", "training")
    epochs: int = _opt(100, "Training epochs per fold.", "training")
    learning_rate: float = _opt(1e-4, "Peak learning rate of AdamW.", "training")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases, norms, logit scale, "
                               "embedding tables).",
                               "training")
    image_lr_mult: float = _opt(1.0, "Learning-rate multiplier for the image backbone (projections keep "
                                "the base rate).", "training")
    text_lr_mult: float = _opt(1.0, "Learning-rate multiplier for the text encoder.", "training")
    warmup_epochs: float = _opt(1.0, "Linear learning-rate warm-up before the cosine decay, in epochs.",
                                "training")
    seed: int = _opt(42, "Seed of model initialisation, sampling and augmentation.", "training")
    monitor: str = _opt("balanced_accuracy", "Metric that picks checkpoint_best.pth (on the images of "
                        "--select-on).",
                        "training", choices=MONITOR_METRICS)
    save_best: bool = _opt(True, "Do not write checkpoint_best.pth.", "training", flag="--no-save-best",
                           negate=True)
    checkpoint_dtype: str = _opt("float32", "Type of the weights in the saved models (checkpoint_best.pth, a "
                                 "finished fold's checkpoint_latest.pth); bfloat16 and float16 halve them. "
                                 "The training state for --resume stays float32.", "training",
                                 choices=("float32", "bfloat16", "float16"))
    patience: int = _opt(0, "Stop a fold after this many epochs without improvement of --monitor "
                         "(0: never stop early).", "training")
    select_on: str = _opt("inner", "What chooses each fold's epoch (and early stopping, the fitted temperature, "
                          "the two-class threshold): inner, a split of the training fold (--inner-val-fraction) "
                          "the scored images never join; last, no choice (the last epoch); fold, the scored "
                          "validation images themselves (optimistic, for comparison only).", "training",
                          choices=("inner", "last", "fold"))
    inner_val_fraction: float = _opt(0.15, "With --select-on inner: the fraction of each training fold held out "
                                     "to choose on (stratified, whole patients when grouped; at least one image per class).", "training")
    calibrate: str = _opt("none", "temperature: fit one softmax temperature per fold on the images that chose "
                          "the model (the inner split; the fold itself with --select-on fold) and apply it to "
                          "its probabilities; predictions (argmax) are unchanged.", "training",
                          choices=("none", "temperature"))
    deterministic: bool = _opt(False, "Use deterministic algorithms only (slower on GPU): two runs with "
                               "the same seed give the same numbers.", "training")
    # cross-validation
    use_cv: bool = _opt(False, "Run K-fold cross-validation (otherwise one train/validation split).", "cv")
    n_splits: int = _opt(5, "Number of folds with --use-cv.", "cv")
    random_state: int = _opt(42, "Seed of the fold assignment.", "cv")
    val_fraction: float = _opt(0.2, "Validation fraction of the single split used without --use-cv.", "cv")
    test_fraction: float = _opt(0.0, "Hold out this stratified fraction as a test set before the folds are "
                                "made; the fold models are scored on it as an ensemble at the end.", "cv")
    groups_file: Optional[str] = _opt(None, "CSV with the columns path,group (paths as in folds.json): each "
                                      "image's patient; no fold splits a group.", "cv")
    group_regex: Optional[str] = _opt(None, "Regular expression searched in each image's path below the data "
                                      "folder; its first capture group is the patient, e.g. '(P\\d+)_'.", "cv")
    group_by: str = _opt("none", "dicom: each DICOM file's PatientID is its group (patient).", "cv",
                         choices=("none", "dicom"))
    # class imbalance
    use_weighted_sampling: bool = _opt(False, "Draw training images with class-balancing weights.",
                                       "imbalance")
    weight_method: str = _opt("inverse_freq", "How class weights follow class counts n_c: inverse_freq "
                              "1/n_c, inverse_sqrt 1/sqrt(n_c), balanced N/(C*n_c).", "imbalance",
                              choices=("inverse_freq", "inverse_sqrt", "balanced"))
    weight_smooth_factor: float = _opt(1.0, "Exponent s on the weights (weight**s): 0 uniform, 1 the full "
                                       "method.", "imbalance")
    # statistics
    bootstrap_resamples: int = _opt(1000, "Bootstrap resamples for the 95-percent confidence intervals of the "
                                    "pooled and test metrics (seeded by --seed; 0: no intervals).", "statistics")
    # report
    explain_method: str = _opt("gradcam", "Heatmap method of report.md's gallery of where the model looks "
                               "(the grad-cam package).", "report", choices=("gradcam", "gradcam++", "eigencam"))
    # system
    output_dir: Optional[str] = _opt(None, "Run folder (default checkpoints/clip_models/<image>_<text>).",
                                     "system")
    num_workers: int = _opt(4, "Data-loader worker processes.", "system")
    gpu_id: int = _opt(0, "CUDA device index (the CPU is used when CUDA is not available).", "system")
    amp: bool = _opt(True, "Disable mixed precision on CUDA.", "system", flag="--no-amp", negate=True)
    compile: bool = _opt(False, "Compile the image encoder, and a trainable text tower, with torch.compile "
                         "(faster steps after a slower first one; needs a C compiler).", "system")
    overwrite: bool = _opt(False, "Replace the results already in --output-dir.", "system")
    resume: bool = _opt(False, "Continue the interrupted run in --output-dir (its config.json is the "
                        "base; flags that change results must match it).", "system")
    tensorboard: bool = _opt(False, "Also log to TensorBoard under OUTPUT_DIR/tensorboard (needs the "
                             "tensorboard package).", "system")
    log_file: Optional[str] = _opt(None, "Log file (default logs/clip_training/<image>_<text>_gpu<id>_"
                                   "<time>.log).", "system")

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return default_run_dir(self.image_encoder, self.text_encoder)

    def to_dict(self) -> dict[str, Any]:
        """Every setting of the run; not the one-off switches that say how this invocation starts
        (a saved config.json must not resume or overwrite when it is used as --config)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in INVOCATION_KEYS}


# Keys of the user's guide example that differ from our field names.
KEY_ALIASES = {"image_encoder_name": "image_encoder", "text_encoder_name": "text_encoder",
               "use_amp": "amp"}
# Keys whose boolean value means the opposite of the field.
NEGATED_KEYS = {"no_amp": "amp", "no_save_best": "save_best"}
# Keys that say one thing two ways (a run takes exactly one): giving one replaces the others.
ALTERNATIVE_KEYS = (frozenset({"data_dir", "data_csv"}),)
# Switches of one invocation, not settings of the run.
INVOCATION_KEYS = frozenset({"resume", "overwrite"})
# Keys that do not change a run's numbers: they may differ when a run is resumed.
NON_RESULT_KEYS = frozenset({"output_dir", "log_file", "num_workers", "gpu_id", "cache_mb", "overwrite",
                             "resume", "tensorboard", "explain_method"})


def with_alternatives(keys: frozenset[str]) -> frozenset[str]:
    """``keys`` and their alternatives: a config entry with ``data_csv`` also leaves ``data_dir`` unset."""
    return keys.union(*(group for group in ALTERNATIVE_KEYS if group & keys))


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _opposite_flag(f: dataclasses.Field) -> str:
    flag = _flag(f)
    return "--" + flag[len("--no-"):] if flag.startswith("--no-") else "--no-" + flag[len("--"):]


def _base_type(tp: Any) -> Any:
    """The type without ``Optional``: ``Optional[int]`` → ``int``, ``Optional[list[str]]`` → ``list``."""
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    return typing.get_origin(base) or base


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a string or a list of strings"}[_base_type(tp)]


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def coerce_value(name: str, value: Any, source: str, key: str | None = None) -> Any:
    """Check a JSON value against the field's type (ints accepted as floats, nothing else converted).

    A list field also takes one string, as a one-item list (``text_template`` was a string once: the
    config.json of older runs must still load and compare equal). ``key`` is the JSON key as written
    (an alias such as ``use_amp``), named in the error.
    """
    tp = _field_types()[name]
    optional = type(None) in typing.get_args(tp)
    base = _base_type(tp)
    if value is None and optional:
        return None
    if base is list and isinstance(value, str):
        return [value]
    if base is list and value == []:
        return None  # no items: as if not given
    ok = (_is_text_list(value) if base is list
          else isinstance(value, bool) if base is bool
          else isinstance(value, int) and not isinstance(value, bool) if base is int
          else isinstance(value, (int, float)) and not isinstance(value, bool) if base is float
          else isinstance(value, str))
    if not ok:
        raise ConfigError(f"{source}: '{key or name}' must be {_type_name(tp)}, got {value!r}")
    return float(value) if base is float else value


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
    types = _field_types()
    for f in config_fields():
        group = groups[f.metadata["group"]]
        base = _base_type(types[f.name])
        help_text = f.metadata["help"]
        if base is bool:
            negate = f.metadata["negate"]
            group.add_argument(_flag(f), dest=f.name, action="store_false" if negate else "store_true",
                               help=help_text)
            # The opposite switch, so a command line can undo a config file's setting.
            group.add_argument(_opposite_flag(f), dest=f.name, action="store_true" if negate else "store_false",
                               help=argparse.SUPPRESS)
            continue
        if base is list:  # given several times: one item each (the command line replaces a config's list)
            group.add_argument(_flag(f), dest=f.name, action="append", metavar=f.name.upper(), help=help_text)
            continue
        default = "" if f.default is None else f" (default: {f.default})"
        # Choices are checked in validate(), which suggests the closest one (argparse does not).
        choices = f.metadata["choices"]
        group.add_argument(_flag(f), dest=f.name, type=base,
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


def normalise_keys(entry: dict[str, Any], source: str) -> dict[str, Any]:
    """Map JSON keys to field names (aliases, negated keys), rejecting unknown ones."""
    names = [f.name for f in config_fields()]
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in names:
            out[key] = coerce_value(key, value, source)
        elif key in KEY_ALIASES:
            out[KEY_ALIASES[key]] = coerce_value(KEY_ALIASES[key], value, source, key)
        elif key in NEGATED_KEYS:
            out[NEGATED_KEYS[key]] = not coerce_value(NEGATED_KEYS[key], value, source, key)
        else:
            valid = names + list(KEY_ALIASES) + list(NEGATED_KEYS)
            raise ConfigError(f"{source}: unknown key '{key}'{suggest(key, valid)}")
    return out


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


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: TrainConfig) -> None:
    """Value checks that do not need the data (those live in the data layer)."""
    _check(cfg.data_dir is not None or cfg.data_csv is not None, "--data-dir is required (a folder with one "
           "sub-folder per class), or --data-csv instead (a CSV with the columns path,label[,group])")
    _check(cfg.data_dir is None or cfg.data_csv is None, "--data-dir and --data-csv exclude each other")
    sources = [cfg.groups_file is not None, cfg.group_regex is not None, cfg.group_by != "none"]
    _check(sum(sources) <= 1, "--groups-file, --group-regex and --group-by exclude each other")
    for f in config_fields():
        choices = f.metadata["choices"]
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{_flag(f)}: invalid choice '{value}'{suggest(str(value), choices)}; "
                              f"expected one of {', '.join(choices)}")
    _check(cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}")
    _check(cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}")
    _check(cfg.learning_rate > 0, f"--learning-rate must be positive, got {cfg.learning_rate}")
    _check(cfg.weight_decay >= 0, f"--weight-decay must be non-negative, got {cfg.weight_decay}")
    _check(0 <= cfg.warmup_epochs <= cfg.epochs,
           f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    _check(cfg.image_lr_mult >= 0, f"--image-lr-mult must be non-negative, got {cfg.image_lr_mult}")
    _check(cfg.text_lr_mult >= 0, f"--text-lr-mult must be non-negative, got {cfg.text_lr_mult}")
    _check(cfg.temperature > 0, f"--temperature must be positive, got {cfg.temperature}")
    _check(cfg.embed_dim >= 1, f"--embed-dim must be at least 1, got {cfg.embed_dim}")
    _check(cfg.img_size >= 16, f"--img-size must be at least 16 pixels, got {cfg.img_size}")
    _check(cfg.cache_mb >= 0, f"--cache-mb must be non-negative, got {cfg.cache_mb}")
    _check(cfg.n_splits >= 2, f"--n-splits must be at least 2, got {cfg.n_splits}")
    _check(0 < cfg.val_fraction < 1, f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    _check(0 <= cfg.test_fraction < 1, f"--test-fraction must be in [0, 1), got {cfg.test_fraction}")
    _check(cfg.bootstrap_resamples >= 0,
           f"--bootstrap-resamples must be non-negative, got {cfg.bootstrap_resamples}")
    _check(cfg.patience >= 0, f"--patience must be non-negative, got {cfg.patience}")
    _check(0 < cfg.inner_val_fraction < 1,
           f"--inner-val-fraction must be between 0 and 1, got {cfg.inner_val_fraction}")
    _check(cfg.select_on != "last" or cfg.patience == 0,
           "--patience needs a choice of epoch: --select-on inner or fold (last trains every --epochs)")
    _check(cfg.select_on != "last" or cfg.calibrate == "none",
           "--calibrate temperature needs images to fit it on: --select-on inner (or fold)")
    _check(not (cfg.resume and cfg.overwrite), "--resume and --overwrite exclude each other")
    _check(cfg.save_best or cfg.test_fraction == 0,
           "--test-fraction needs the best checkpoints: drop --no-save-best")
    _check(cfg.weight_smooth_factor >= 0,
           f"--weight-smooth-factor must be non-negative, got {cfg.weight_smooth_factor}")
    _check(cfg.num_workers >= 0, f"--num-workers must be non-negative, got {cfg.num_workers}")
    _check(cfg.gpu_id >= 0, f"--gpu-id must be non-negative, got {cfg.gpu_id}")
    _check(cfg.image_weights is None or Path(cfg.image_weights).exists(),
           f"--image-weights {cfg.image_weights}: no such file or folder")
    _check(cfg.text_weights is None or Path(cfg.text_weights).exists(),
           f"--text-weights {cfg.text_weights}: no such file or folder")
    for template in cfg.text_template or ():
        _check("{class_name}" in template, f"--text-template must contain '{{class_name}}', got {template!r}")
