"""The methods paragraph at the end of report.md, written from what the run did.

Every sentence is made from the run's own files: ``config.json`` (the settings), ``folds.json``
(the split) and ``cv_summary.json`` (the classes and their images, the intervals, the software and
device recorded at training time). A fact the files do not hold is left out rather than guessed,
so the paragraph can be pasted into a paper's methods section as it is. Its sentences, in English
and in Chinese, are phrases of :mod:`reporting.phrases`: report.zh.md holds the same paragraph in full.
"""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

from reporting.phrases import ENGLISH, Phrases
from reporting.finetuning import finetuning_sentences
from reporting.run_summary import RunSummary

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "scikit-learn", "scipy")
WEIGHT_METHODS = {"inverse_freq": "1/n_c", "inverse_sqrt": "1/sqrt(n_c)", "balanced": "N/(C·n_c)"}


# ---------------------------------------------------------------------------------------------
# Recorded at training time
# ---------------------------------------------------------------------------------------------
def run_environment(device: object, mixed_precision: object | None) -> dict[str, Any]:
    """Python, package versions, train_clip's git commit (when it is a git checkout) and the device.

    ``mixed_precision`` is the autocast dtype (``torch.bfloat16``), None for full precision.
    """
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    precision = str(mixed_precision).removeprefix("torch.") if mixed_precision is not None else None
    environment: dict[str, Any] = {"versions": versions, "device": str(device), "mixed_precision": precision}
    commit = _git_commit()
    if commit:
        environment["train_clip_commit"] = commit
    return environment


def _git_commit() -> str | None:
    """HEAD of the checkout train_clip runs from, marked when it has uncommitted changes; None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPOSITORY, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPOSITORY,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} (with uncommitted changes)" if dirty else head or None


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------
def class_counts(summary: RunSummary) -> list[int]:
    """Images per class: validated out of fold plus held out for the test set."""
    counts = [c["support"] for c in summary.oof["per_class"]]
    test = summary.section("test") or {}
    for k, c in enumerate(test.get("per_class", [])):
        counts[k] += c["support"]
    return counts


def weights_start(name: str, tower: str, weights_file: str | None) -> Any:
    """The encoder family's words for how the tower began, in English and Chinese (models/families.py).

    Imported here, not at the top: ``models`` loads torch, and ``python -m reporting.compare`` reads
    prediction files through this package without ever writing a methods paragraph.
    """
    from models.families import weights_start as start

    return start(name, tower, Path(weights_file).name if weights_file else None)


def base_name(name: str) -> str:
    from models.names import split_suffix

    return split_suffix(name).base


def _start(config: Mapping[str, Any], tower: str, t: Phrases) -> str:
    start = weights_start(config[f"{tower}_encoder"], tower, config.get(f"{tower}_weights"))
    return start.chinese if t.lang == "zh" else start.english


def _image_encoder(config: Mapping[str, Any], t: Phrases) -> str:
    frozen = t("m_image_frozen") if config.get("freeze_image") else ""
    return t("m_image_encoder", base=base_name(config["image_encoder"]), start=_start(config, "image", t), frozen=frozen)


def _text_encoder(config: Mapping[str, Any], t: Phrases) -> str:
    frozen = t("m_text_frozen") if config.get("freeze_text") else ""
    return t("m_text_encoder", base=base_name(config["text_encoder"]), start=_start(config, "text", t), frozen=frozen)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _split(config: Mapping[str, Any], folds: Mapping[str, Any], n_images: int, t: Phrases) -> list[str]:
    n_test = len(folds.get("test", []))
    sentences = []
    if n_test:
        sentences.append(t("m_test", percent=_percent(config["test_fraction"]), n=n_test, seed=config["random_state"]))
    subject = t("m_subject_rest", n=n_images - n_test) if n_test else t("m_subject_all")
    if config.get("use_cv"):
        sentences.append(t("m_cv", subject=subject, k=len(folds["folds"]), seed=config["random_state"]))
    else:
        sentences.append(t("m_holdout", subject=subject, percent=_percent(config["val_fraction"]),
                           seed=config["random_state"]))
    return sentences


def _model(config: Mapping[str, Any], t: Phrases) -> str:
    loss = t("m_loss_symmetric") if config.get("loss") == "symmetric" else t("m_loss_ce")
    return t("m_model", image=_image_encoder(config, t), text=_text_encoder(config, t), dim=config["embed_dim"],
             temperature=f"{config['temperature']:g}", loss=loss)


def _training(config: Mapping[str, Any], t: Phrases) -> list[str]:
    sentences = [t("m_images", size=config["img_size"], augmentation=t(f"m_aug_{config['augmentation']}"))]
    if config.get("use_weighted_sampling"):
        method = config["weight_method"]
        smooth = config.get("weight_smooth_factor", 1.0)
        exponent = t("m_exponent", s=f"{smooth:g}") if smooth != 1 else ""
        sentences.append(t("m_weighted", formula=WEIGHT_METHODS.get(method, method), method=method, exponent=exponent))
    else:
        sentences.append(t("m_uniform"))
    towers = [t(phrase, m=f"{config[key]:g}") for phrase, key in (("m_tower_image", "image_lr_mult"),
                                                                   ("m_tower_text", "text_lr_mult"))
              if config.get(key, 1.0) != 1.0]
    sentences.append(t("m_optimiser", lr=f"{config['learning_rate']:g}",
                       multiplied=t("m_multiplied", towers=t("m_and").join(towers)) if towers else "",
                       wd=f"{config['weight_decay']:g}", batch=config["batch_size"],
                       warmup=f"{config['warmup_epochs']:g}", epochs=config["epochs"],
                       patience=t("m_patience", p=config["patience"]) if config.get("patience") else ""))
    sentences += finetuning_sentences(config)  # English in both reports (reporting/finetuning.py)
    sentences.append(_selection(config, t))
    if config.get("calibrate") == "temperature":
        where = "m_where_inner" if _selected_on(config) == "inner" else "m_where_fold"
        sentences.append(t("m_calibrated", where=t(where)))
    return sentences


def _selected_on(config: Mapping[str, Any]) -> str:
    """--select-on; a config from before it existed chose on the validation fold."""
    return config.get("select_on", "fold")


def _selection(config: Mapping[str, Any], t: Phrases) -> str:
    """What chose each fold's model, and what that means for the reported numbers."""
    on = _selected_on(config)
    if on == "inner":
        grouped = (config.get("groups_file") or config.get("group_regex")
                   or config.get("group_by", "none") != "none")
        return t("m_select_inner", patient=t("m_by_patient") if grouped else "",
                 percent=_percent(config["inner_val_fraction"]), monitor=config["monitor"],
                 early=t("m_early") if config.get("patience") else "")
    if on == "last":
        return t("m_select_last")
    return t("m_select_fold", monitor=config["monitor"])


def _statistics(summary: RunSummary, t: Phrases) -> list[str]:
    settings = summary.section("ci_settings")
    sentences = []
    if summary.section("test"):
        sentences.append(t("m_ensemble"))
    if settings:
        unit = t("unit_group" if settings["resampled_unit"] == "group" else "unit_image")
        sentences.append(t("m_intervals", method=settings["method"], n=settings["n_resamples"], unit=unit,
                           seed=settings["seed"], and_test=t("m_and_test") if summary.section("test_ci") else ""))
    point = summary.section("operating_point")
    if point:
        rule = "m_threshold_inner" if "inner_sensitivity" in point else "m_threshold_oof"
        sentences.append(t(rule, positive=point["positive_class"]))
    return sentences


def _software(summary: RunSummary, t: Phrases) -> list[str]:
    environment = summary.environment
    if not environment:
        return []
    versions = environment.get("versions", {})
    listed = t.join(f"{name} {version}" for name, version in versions.items() if name != "python")
    commit = environment.get("train_clip_commit")
    precision = environment.get("mixed_precision")
    return [t("m_software", python=versions.get("python", "?"), listed=listed,
              commit=t("m_commit", commit=commit) if commit else "", device=environment.get("device", "?"),
              precision=t("m_mixed", precision=precision) if precision else t("m_full"))]


def methods_paragraph(config: Mapping[str, Any], folds: Mapping[str, Any], summary: RunSummary,
                      t: Phrases = ENGLISH) -> str:
    """The run's methods as one paragraph, in the language of ``t``."""
    names = summary.class_names
    counts = class_counts(summary)
    n_images = sum(counts)
    listed = t.join(t("m_class_count", name=name, n=n) for name, n in zip(names, counts))
    sentences = [t("m_data", n=n_images, c=len(names), listed=listed)]
    sentences += _split(config, folds, n_images, t)
    sentences += [_model(config, t)] + _training(config, t) + _statistics(summary, t) + _software(summary, t)
    return ("" if t.lang == "zh" else " ").join(sentences)


def methods_section(config: Mapping[str, Any], folds: Mapping[str, Any], summary: RunSummary,
                    t: Phrases = ENGLISH) -> list[str]:
    """The report's closing section (Markdown lines) in the language of ``t``."""
    return [t("methods_heading"), "", methods_paragraph(config, folds, summary, t)]
