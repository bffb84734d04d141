"""Value checks of a :class:`~training.config.TrainConfig` that need no data: one line per problem,
naming the flag (scikit-learn-like early validation, before anything is written). The config is
typed ``Any`` here: training.config imports this module, and a type import back would be a circle.

The fine-tuning methods' refusals live here too (:func:`check_finetuning`): each names the flags
that exclude each other and the way out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.errors import ConfigError


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_values(cfg: Any) -> None:
    check(cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}")
    check(cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}")
    check(cfg.learning_rate > 0, f"--learning-rate must be positive, got {cfg.learning_rate}")
    check(cfg.weight_decay >= 0, f"--weight-decay must be non-negative, got {cfg.weight_decay}")
    check(0 <= cfg.warmup_epochs <= cfg.epochs,
           f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    check(cfg.image_lr_mult >= 0, f"--image-lr-mult must be non-negative, got {cfg.image_lr_mult}")
    check(cfg.text_lr_mult >= 0, f"--text-lr-mult must be non-negative, got {cfg.text_lr_mult}")
    check(cfg.temperature > 0, f"--temperature must be positive, got {cfg.temperature}")
    check(cfg.embed_dim >= 1, f"--embed-dim must be at least 1, got {cfg.embed_dim}")
    check(cfg.img_size >= 16, f"--img-size must be at least 16 pixels, got {cfg.img_size}")
    check(cfg.cache_mb >= 0, f"--cache-mb must be non-negative, got {cfg.cache_mb}")
    check(cfg.n_splits >= 2, f"--n-splits must be at least 2, got {cfg.n_splits}")
    check(0 < cfg.val_fraction < 1, f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    check(0 <= cfg.test_fraction < 1, f"--test-fraction must be in [0, 1), got {cfg.test_fraction}")
    check(cfg.bootstrap_resamples >= 0,
           f"--bootstrap-resamples must be non-negative, got {cfg.bootstrap_resamples}")
    check(cfg.patience >= 0, f"--patience must be non-negative, got {cfg.patience}")
    check(0 < cfg.inner_val_fraction < 1,
           f"--inner-val-fraction must be between 0 and 1, got {cfg.inner_val_fraction}")
    check(cfg.select_on != "last" or cfg.patience == 0,
           "--patience needs a choice of epoch: --select-on inner or fold (last trains every --epochs)")
    check(cfg.select_on != "last" or cfg.calibrate == "none",
           "--calibrate temperature needs images to fit it on: --select-on inner (or fold)")
    check(not (cfg.resume and cfg.overwrite), "--resume and --overwrite exclude each other")
    check(cfg.save_best or cfg.test_fraction == 0,
           "--test-fraction needs the best checkpoints: drop --no-save-best")
    check(cfg.weight_smooth_factor >= 0,
           f"--weight-smooth-factor must be non-negative, got {cfg.weight_smooth_factor}")
    check(cfg.compile or cfg.compile_mode == "default", f"--compile-mode {cfg.compile_mode} needs --compile")
    check(cfg.num_workers >= 0, f"--num-workers must be non-negative, got {cfg.num_workers}")
    check(cfg.gpu_id >= 0, f"--gpu-id must be non-negative, got {cfg.gpu_id}")
    check(cfg.image_weights is None or Path(cfg.image_weights).exists(),
           f"--image-weights {cfg.image_weights}: no such file or folder")
    check(cfg.text_weights is None or Path(cfg.text_weights).exists(),
           f"--text-weights {cfg.text_weights}: no such file or folder")
    for template in cfg.text_template or ():
        check("{class_name}" in template, f"--text-template must contain '{{class_name}}', got {template!r}")


def check_finetuning(cfg: Any) -> None:
    """The fine-tuning methods (README "Fine-tuning methods", docs/design.md §12): ranges and the
    combinations that cannot work."""
    check(cfg.accum_steps >= 1, f"--accum-steps must be at least 1, got {cfg.accum_steps}")
    check(cfg.batch_size % cfg.accum_steps == 0,
          f"--accum-steps {cfg.accum_steps} must divide --batch-size {cfg.batch_size} into equal micro-batches")
    check(0 <= cfg.ema_decay < 1, f"--ema-decay must be in [0, 1) (0: off), got {cfg.ema_decay}")
    check(0 <= cfg.wise_alpha <= 1, f"--wise-alpha must be between 0 and 1, got {cfg.wise_alpha}")
    check(cfg.wise_alpha == 1 or has_zero_shot_start(cfg),
          "--wise-alpha needs a pretrained zero-shot start to interpolate with: --image-encoder and "
          "--text-encoder the same clip:/cn-clip:/siglip: model, pretrained (not :scratch), with the same weights")
    check(0 <= cfg.lp_epochs < cfg.epochs,
          f"--lp-epochs must be in [0, --epochs) ({cfg.epochs}): LP-FT trains everything after it, got {cfg.lp_epochs}")
    check(0 < cfg.layer_decay <= 1, f"--layer-decay must be in (0, 1] (1: off), got {cfg.layer_decay}")
    check(cfg.unlocked_groups >= 0, f"--unlocked-groups must be non-negative (0: all), got {cfg.unlocked_groups}")
    check(not cfg.freeze_image or (cfg.layer_decay == 1 and cfg.unlocked_groups == 0),
          "--layer-decay and --unlocked-groups shape the image backbone's training: drop --freeze-image")
    check_lora(cfg)


def check_lora(cfg: Any) -> None:
    """``--lora-rank`` (training.lora): the adapters are what trains in the towers, so the methods that
    shape how a tower's own weights train do not apply."""
    check(cfg.lora_rank >= 0, f"--lora-rank must be non-negative (0: off), got {cfg.lora_rank}")
    if not cfg.lora_rank:
        return
    check(not (cfg.freeze_image and cfg.freeze_text),
          "--lora-rank adapts the trainable towers, and --freeze-image with --freeze-text leaves none: drop one")
    check(cfg.layer_decay == 1 and cfg.unlocked_groups == 0,
          "--lora-rank freezes the image backbone's own weights and trains adapters in all its blocks: "
          "--layer-decay and --unlocked-groups do not apply; drop them")
    check(cfg.wise_alpha == 1,
          "--wise-alpha with --lora-rank: interpolating the adapters' factors A and B does not interpolate "
          "their product BA, the weights' change; drop one of them")


def has_zero_shot_start(cfg: Any) -> bool:
    """Paired pretrained towers: epoch 0 is the model's own zero-shot classifier (docs/design.md §3)."""
    # Imported here: the config (read by the study runner before every study) must not load torch.
    from models.clip_towers import paired_source
    from models.names import split_suffix

    pretrained = all(split_suffix(name).pretrained is not False for name in (cfg.image_encoder, cfg.text_encoder))
    return pretrained and paired_source(cfg.image_encoder, cfg.text_encoder, cfg.image_weights, cfg.text_weights,
                                        check_exists=False) is not None
