"""The run configuration: one dataclass, its JSON keys and their types, and validation.

The command line and the JSON files are read into it by :mod:`training.arguments`. JSON keys are
the flag names in snake_case. Every problem is a :class:`ConfigError` whose message names the
flag or key and, for a misspelt name, suggests the closest valid one.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from reporting.metric_table import MONITOR_METRICS
from reporting.phrases import REPORT_LANGS
from reporting.run_summary import SELECTION_RULES
from training.checks import check, check_finetuning, check_values
from utils.errors import ConfigError, suggest
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
    augment_on: str = _opt("workers", "Where --augmentation runs: workers (each image, in the data-loader worker "
                           "processes) or device (whole batches on the training device, the GPU when there is one; "
                           "the workers then only index the decoded images).", "data",
                           choices=("workers", "device"))
    strict_images: bool = _opt(False, "Stop on an unreadable image instead of skipping it with a warning.",
                               "data")
    cache_mb: int = _opt(4096, "RAM budget (MiB) for decoded images; beyond it images are re-read "
                         "from disk.", "data")
    # model
    image_encoder: str = _opt("resnet18", "Image encoder name (see --list-encoders; timm:<model> for any timm "
                              "model); add ':pretrained' for ImageNet weights. clip:<model>, cn-clip:<model> and "
                              "siglip:<model> are CLIP image towers (pretrained unless ':scratch'); with the same --text-encoder "
                              "the model keeps that CLIP's projections.", "model")
    text_encoder: str = _opt("clip:ViT-B/32", "Text encoder: clip:<model>, clip:hf-hub:<repo>, cn-clip:<model>, "
                             "siglip:<model>, a HuggingFace name, or hf:<name or folder>; add ':scratch' for random weights.",
                             "model")
    image_weights: Optional[str] = _opt(
        None, "Weights file for the image encoder (a state dict: .pth/.pt/.bin/.safetensors; for clip:* as "
        "--text-weights, for cn-clip:* and siglip:* a model folder); taken before the library caches and downloads "
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
    accum_steps: int = _opt(1, "Gradient accumulation: each step of --batch-size images runs as this many equal "
                            "micro-batches, their gradients summed: the same update, less memory.", "training")
    ema_decay: float = _opt(0.0, "Evaluate and save an exponential moving average of the weights, updated each step "
                            "with this decay (e.g. 0.999; 0: off).", "training")
    wise_alpha: float = _opt(1.0, "WiSE-FT: the saved model is (1-alpha)*zero-shot + alpha*fine-tuned weights "
                             "(needs pretrained paired towers; 1: off).", "training")
    lp_epochs: int = _opt(0, "LP-FT: train only the projections and logit scale for this many first epochs, "
                          "then everything.", "training")
    layer_decay: float = _opt(1.0, "Layer-wise learning-rate decay of the image backbone: each block earlier "
                              "gets this factor more (e.g. 0.75; 1: off).", "training")
    unlocked_groups: int = _opt(0, "Train only the last N layer groups of the image backbone (0: all).",
                                "training")
    lora_rank: int = _opt(0, "LoRA (peft): train rank-R adapters of the towers' attention and MLP layers, their "
                          "pretrained weights frozen; checkpoints hold only the adapters (0: off).", "training")
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
                          choices=SELECTION_RULES)
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
    report_lang: str = _opt("both", "Language of the run's report: en (report.md), zh (report.zh.md, every section in "
                            "Chinese) or both.", "report", choices=REPORT_LANGS)
    # system
    output_dir: Optional[str] = _opt(None, "Run folder (default checkpoints/clip_models/<image>_<text>).",
                                     "system")
    num_workers: int = _opt(4, "Data-loader worker processes.", "system")
    gpu_id: int = _opt(0, "CUDA device index (the CPU is used when CUDA is not available).", "system")
    amp: bool = _opt(True, "Disable mixed precision on CUDA.", "system", flag="--no-amp", negate=True)
    compile: bool = _opt(False, "Compile the image encoder, and a trainable text tower, with torch.compile "
                         "(faster steps after a slower first one; needs a C compiler).", "system")
    compile_mode: str = _opt("default", "torch.compile mode with --compile: default, or reduce-overhead (CUDA "
                             "graphs: each step replays the recorded kernels, less host time per step for small "
                             "backbones; CUDA only, the default mode elsewhere).", "system",
                             choices=("default", "reduce-overhead"))
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
                             "resume", "tensorboard", "explain_method", "report_lang"})


def with_alternatives(keys: frozenset[str]) -> frozenset[str]:
    """``keys`` and their alternatives: a config entry with ``data_csv`` also leaves ``data_dir`` unset."""
    return keys.union(*(group for group in ALTERNATIVE_KEYS if group & keys))


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def opposite_flag_of(f: dataclasses.Field) -> str:
    flag = flag_of(f)
    return "--" + flag[len("--no-"):] if flag.startswith("--no-") else "--no-" + flag[len("--"):]


def base_type(tp: Any) -> Any:
    """The type without ``Optional``: ``Optional[int]`` → ``int``, ``Optional[list[str]]`` → ``list``."""
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    return typing.get_origin(base) or base


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a string or a list of strings"}[base_type(tp)]


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def coerce_value(name: str, value: Any, source: str, key: str | None = None) -> Any:
    """Check a JSON value against the field's type (ints accepted as floats, nothing else converted).

    A list field also takes one string, as a one-item list (one ``text_template`` is naturally written
    as a string). ``key`` is the JSON key as written (an alias such as ``use_amp``), named in the error.
    """
    tp = field_types()[name]
    optional = type(None) in typing.get_args(tp)
    base = base_type(tp)
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




def validate(cfg: TrainConfig) -> None:
    """Value checks that do not need the data (those live in the data layer)."""
    check(cfg.data_dir is not None or cfg.data_csv is not None, "--data-dir is required (a folder with one "
           "sub-folder per class), or --data-csv instead (a CSV with the columns path,label[,group])")
    check(cfg.data_dir is None or cfg.data_csv is None, "--data-dir and --data-csv exclude each other")
    sources = [cfg.groups_file is not None, cfg.group_regex is not None, cfg.group_by != "none"]
    check(sum(sources) <= 1, "--groups-file, --group-regex and --group-by exclude each other")
    for f in config_fields():
        choices = f.metadata["choices"]
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{flag_of(f)}: invalid choice '{value}'{suggest(str(value), choices)}; "
                              f"expected one of {', '.join(choices)}")
    check_values(cfg)
    check_finetuning(cfg)
