"""The methods paragraph at the end of report.md, written from what the run did.

Every sentence is made from the run's own files: ``config.json`` (the settings), ``folds.json``
(the split) and ``cv_summary.json`` (the classes and their images, the intervals, the software and
device recorded at training time). A fact the files do not hold is left out rather than guessed,
so the paragraph can be pasted into a paper's methods section as it is. When the class names are
Chinese, a Chinese version follows.
"""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from reporting.finetuning import finetuning_sentences
from reporting.plots import needs_cjk

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "scikit-learn", "scipy")
AUGMENTATION = {
    "none": "no augmentation",
    "minimal": "small random affine jitter (rotation ±5°, shift ±5%, scale 0.95-1.05)",
    "standard": ("random resized crops (75-100% of the area, aspect ratio 0.9-1.1), horizontal flips, rotation "
                 "±10° and brightness and contrast jitter of ±20%"),
}
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
def class_counts(summary: Mapping[str, Any]) -> list[int]:
    """Images per class: validated out of fold plus held out for the test set."""
    counts = [c["support"] for c in summary["oof"]["per_class"]]
    test = summary.get("test") or {}
    for k, c in enumerate(test.get("per_class", [])):
        counts[k] += c["support"]
    return counts


def split_suffix(name: str) -> Any:
    """The encoder registries' own parse of ``NAME:pretrained`` / ``NAME:scratch``.

    Imported here, not at the top: ``models`` loads torch, and ``python -m reporting.compare`` reads
    prediction files through this package without ever writing a methods paragraph.
    """
    from models.names import split_suffix as parse

    return parse(name)


def pretrained_source(name: str) -> str | None:
    """The image encoder registry's answer: whose weights ``name`` starts from (imported here, as above)."""
    from models.image_encoders import pretrained_source as source

    return source(name)


def _image_encoder(config: Mapping[str, Any]) -> str:
    name = config["image_encoder"]
    if config.get("image_weights"):
        start = f"initialised from the weights file {Path(config['image_weights']).name}"
    else:
        source = pretrained_source(name)
        start = f"initialised with pretrained {source} weights" if source else "randomly initialised"
    frozen = ", kept frozen (only its projection was trained)" if config.get("freeze_image") else ""
    return f"the image encoder {split_suffix(name).base} ({start}{frozen})"


def _text_encoder(config: Mapping[str, Any]) -> str:
    name = config["text_encoder"]
    if config.get("text_weights"):
        start = f"initialised from {Path(config['text_weights']).name}"
    elif split_suffix(name).pretrained is False:
        start = "randomly initialised"
    elif split_suffix(name).base.startswith("hf:"):
        start = "with the weights stored there"
    else:
        start = "with its pretrained weights"
    frozen = ", kept frozen" if config.get("freeze_text") else ""
    return f"the text encoder {split_suffix(name).base} ({start}{frozen})"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _split(config: Mapping[str, Any], folds: Mapping[str, Any], n_images: int) -> list[str]:
    n_test = len(folds.get("test", []))
    sentences = []
    if n_test:
        sentences.append(f"A stratified {_percent(config['test_fraction'])} of the images ({n_test}) was held out as a "
                         f"test set before any fold was made (seed {config['random_state']}); no fold trained on "
                         "it or chose an epoch with it.")
    remaining = f"the remaining {n_images - n_test} images" if n_test else "the images"
    if config.get("use_cv"):
        sentences.append(f"{remaining.capitalize()} were split by stratified {len(folds['folds'])}-fold "
                         f"cross-validation (scikit-learn StratifiedKFold, shuffled with seed "
                         f"{config['random_state']}), so that each was validated exactly once.")
    else:
        sentences.append(f"{remaining.capitalize()} were split once, stratified, into training and validation "
                         f"({_percent(config['val_fraction'])} for validation, seed {config['random_state']}).")
    return sentences


def _model(config: Mapping[str, Any]) -> str:
    loss = ("the image-to-class cross-entropy plus the class-to-image contrastive term"
            if config.get("loss") == "symmetric" else "the image-to-class cross-entropy")
    return (f"The classifier is a CLIP-style dual encoder: {_image_encoder(config)} and {_text_encoder(config)}, "
            f"each followed by a linear projection to a shared {config['embed_dim']}-dimensional embedding. "
            "Each class is represented by the normalised mean embedding of its text descriptions, and an image "
            "is scored by its cosine similarity to each class, multiplied by a learnable scale initialised at "
            f"1/{config['temperature']:g}; the loss was {loss}.")


def _training(config: Mapping[str, Any]) -> list[str]:
    sentences = [f"Images were padded to a square with black, resized to {config['img_size']}×{config['img_size']} "
                 f"pixels and normalised with the ImageNet mean and standard deviation; training used "
                 f"{AUGMENTATION[config['augmentation']]}."]
    if config.get("use_weighted_sampling"):
        method = config["weight_method"]
        smooth = config.get("weight_smooth_factor", 1.0)
        exponent = f", raised to the power {smooth:g}" if smooth != 1 else ""
        sentences.append(f"Training images were drawn with replacement with class-balancing weights "
                         f"{WEIGHT_METHODS.get(method, method)} ({method}{exponent}), n_c being a class's "
                         "training images.")
    else:
        sentences.append("Training images were drawn uniformly in a shuffled order (no class re-weighting).")
    multipliers = [f"{tower} ×{config[key]:g}" for tower, key in (("image backbone", "image_lr_mult"),
                                                                   ("text encoder", "text_lr_mult"))
                   if config.get(key, 1.0) != 1.0]
    sentences.append(
        f"The model was optimised with AdamW (learning rate {config['learning_rate']:g}"
        + (f", multiplied for the {' and '.join(multipliers)}" if multipliers else "")
        + f"; weight decay {config['weight_decay']:g}, not applied to biases, normalisation layers, embedding "
        "tables and the scale), "
        f"in batches of {config['batch_size']}, with a linear warm-up over {config['warmup_epochs']:g} epoch(s) "
        f"followed by cosine decay, for up to {config['epochs']} epochs per fold"
        + (f", stopping a fold early after {config['patience']} epochs without improvement" if config.get("patience")
           else "") + ".")
    sentences += finetuning_sentences(config)
    sentences.append(_selection(config))
    if config.get("calibrate") == "temperature":
        sentences.append("Each fold model's probabilities were calibrated by temperature scaling (one temperature "
                         "fitted by minimising the negative log-likelihood, Guo et al. 2017) on "
                         + ("its inner validation split" if _selected_on(config) == "inner"
                            else "its own validation images") + "; predictions were unchanged.")
    return sentences


def _selected_on(config: Mapping[str, Any]) -> str:
    """--select-on; a config from before it existed chose on the validation fold."""
    return config.get("select_on", "fold")


def _selection(config: Mapping[str, Any]) -> str:
    """What chose each fold's model, and what that means for the reported numbers."""
    on = _selected_on(config)
    if on == "inner":
        return (f"Each training fold was split once more, stratified"
                + (" and by patient" if config.get("groups_file") or config.get("group_regex")
                   or config.get("group_by", "none") != "none" else "")
                + f", into an inner training part and an inner validation part (at least "
                f"{_percent(config['inner_val_fraction'])}, at least one image per class); the model trained on the "
                f"inner training part, and the epoch with the best inner-validation {config['monitor']} was kept "
                "(epoch 0, the untrained zero-shot model, competed as well)"
                + (", which also decided early stopping" if config.get("patience") else "")
                + ". The validation images of the fold were never used to choose anything, so the fold and pooled "
                "estimates are not biased by model selection.")
    if on == "last":
        return ("The model kept from each fold is the one after the last epoch: no epoch was chosen, so the "
                "validation images played no part in choosing the model.")
    return (f"The model kept from each fold is the epoch with the best validation {config['monitor']}, chosen on "
            "the same images that are scored (epoch 0, the model before any training, competed as well); the "
            "reported numbers are therefore optimistic.")


def _statistics(summary: Mapping[str, Any]) -> list[str]:
    settings = summary.get("ci_settings")
    sentences = []
    if summary.get("test"):
        sentences.append("On the test set the fold models were combined by averaging their class probabilities.")
    if settings:
        sentences.append(f"95% confidence intervals are {settings['method']} bootstrap intervals "
                         f"({settings['n_resamples']} resamples of {settings['resampled_unit']}s, seed "
                         f"{settings['seed']}) of the pooled out-of-fold"
                         + (" and test-set" if summary.get("test_ci") else "") + " predictions.")
    point = summary.get("operating_point")
    if point:
        where = ("inner validation predictions and then applied to the out-of-fold" if "inner_sensitivity" in point
                 else "out-of-fold")
        sentences.append(f"The decision threshold for {point['positive_class']} was chosen on the pooled {where} "
                         "predictions by Youden's J.")
    return sentences


def _software(summary: Mapping[str, Any]) -> list[str]:
    environment = summary.get("environment")
    if not environment:
        return []
    versions = environment.get("versions", {})
    listed = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "python")
    sentence = f"Software: Python {versions.get('python', '?')}, {listed}"
    if environment.get("train_clip_commit"):
        sentence += f", train_clip commit {environment['train_clip_commit']}"
    sentence += f"; trained on {environment.get('device', '?')}"
    precision = environment.get("mixed_precision")
    return [sentence + (f" with {precision} mixed precision." if precision else " in full precision.")]


def methods_paragraph(config: Mapping[str, Any], folds: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The run's methods in English, as one paragraph."""
    names: Sequence[str] = summary["class_names"]
    counts = class_counts(summary)
    n_images = sum(counts)
    listed = ", ".join(f"{name} ({n})" for name, n in zip(names, counts))
    sentences = [f"The data set holds {n_images} images in {len(names)} classes: {listed}."]
    sentences += _split(config, folds, n_images)
    sentences += [_model(config)] + _training(config) + _statistics(summary) + _software(summary)
    return " ".join(sentences)


def methods_section(config: Mapping[str, Any], folds: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    """report.md's closing section (Markdown lines); a Chinese summary follows when the classes are Chinese."""
    lines = ["## Methods", "", methods_paragraph(config, folds, summary)]
    if needs_cjk(summary["class_names"]):
        lines += ["", chinese_summary(config, folds, summary)]
    return lines


def chinese_summary(config: Mapping[str, Any], folds: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The key facts in Chinese (a short version of the English paragraph, for Chinese-named classes)."""
    counts = class_counts(summary)
    listed = "、".join(f"{name}（{n}）" for name, n in zip(summary["class_names"], counts))
    split = (f"分层 {len(folds['folds'])} 折交叉验证（随机种子 {config['random_state']}）" if config.get("use_cv")
             else f"一次分层训练/验证划分（验证集 {_percent(config['val_fraction'])}）")
    test = f"；另按分层抽样留出 {len(folds['test'])} 张图像作为独立测试集" if folds.get("test") else ""
    image, image_source = split_suffix(config["image_encoder"]), pretrained_source(config["image_encoder"])
    text = split_suffix(config["text_encoder"])
    sampling = (f"按类别加权采样（{config['weight_method']}）" if config.get("use_weighted_sampling")
                else "均匀随机采样（无类别加权）")
    return (f"方法（中文）：数据共 {sum(counts)} 张图像、{len(counts)} 个类别：{listed}。采用{split}{test}。"
            f"图像编码器 {image.base}（{f'{image_source} 预训练权重' if image_source else '随机初始化'}），文本编码器 "
            f"{text.base}（{'随机初始化' if text.pretrained is False else '预训练权重'}），输入尺寸 "
            f"{config['img_size']} 像素，{sampling}。优化器 AdamW（学习率 {config['learning_rate']:g}，权重衰减 "
            f"{config['weight_decay']:g}），线性预热 {config['warmup_epochs']:g} 个 epoch 后余弦衰减，每折最多 "
            f"{config['epochs']} 个 epoch；{CHINESE_SELECTION[_selected_on(config)].format(monitor=config['monitor'])}")


CHINESE_SELECTION = {
    "inner": "每折的训练集再分层划分出内部验证集，按内部验证集的 {monitor} 选择最佳 epoch（第 0 个 epoch 即未训练的"
             "零样本模型也参与选择）；该折的验证集只用于评分，不参与任何选择，因此估计没有选择偏差。",
    "last": "每折保留最后一个 epoch 的模型，不做选择，验证集不参与模型选择。",
    "fold": "每折按验证集 {monitor} 选择最佳 epoch（第 0 个 epoch 即未训练的零样本模型也参与选择）；选择与评分用的是"
            "同一批图像，因此结果偏乐观。",
}
