"""The model a fold scores and saves, when it is not the one that trains (docs/design.md §12).

* ``--ema-decay d``: an exponential moving average of the weights (timm's ``ModelEmaV3``: parameters
  and buffers, updated after every optimiser step) is evaluated, chosen and checkpointed;
* ``--wise-alpha a`` (WiSE-FT, Wortsman et al. 2022): the evaluated model is
  ``(1 - a) * zero-shot + a * fine-tuned`` (the fine-tuned one being the EMA when there is one).

The training weights then travel in ``checkpoint_latest.pth`` beside the saved model, so that
``--resume`` continues the very same training.
"""
from __future__ import annotations

import copy
import re
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from training.config import TrainConfig


class ScoredModel:
    """Builds, updates and restores the evaluated model of one fold; ``model`` is the trained one."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, zero_shot: dict[str, torch.Tensor]) -> None:
        self.trained = model
        # Fixed here, before LP-FT's first phase freezes the towers for a while.
        self.changing = changing_keys(model)
        # timm's EMA keeps a copy (parameters and buffers) in the model's type and on its device.
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
        self.alpha = cfg.wise_alpha
        self.zero_shot = zero_shot if self.alpha < 1 else None
        self.wise = copy.deepcopy(model).eval() if self.alpha < 1 else None

    @property
    def separate(self) -> bool:
        """Whether the scored model is not the trained one (and the training weights must be saved)."""
        return self.ema is not None or self.wise is not None

    @property
    def fine_tuned(self) -> nn.Module:
        return self.trained if self.ema is None else self.ema.module

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.trained)

    def model(self) -> nn.Module:
        """The model to evaluate and save now."""
        if self.wise is None:
            return self.fine_tuned
        self.wise.load_state_dict(wise_ft(self.zero_shot, self.fine_tuned.state_dict(), self.alpha))
        return self.wise

    def training_weights(self) -> dict[str, Any]:
        """What ``checkpoint_latest.pth`` needs besides the scored model to resume (empty: nothing)."""
        if not self.separate:
            return {}
        weights = {"trained": self._changing_state(self.trained)}
        if self.ema is not None and self.wise is not None:
            weights["ema"] = self._changing_state(self.ema.module)
        return {"trained_weights": weights}

    def restore(self, saved: dict[str, Any]) -> None:
        """After ``self.trained`` loaded the saved (scored) model: put back the training weights."""
        if not self.separate:
            return
        weights = saved["trained_weights"]
        if self.ema is not None:
            self.ema.module.load_state_dict(saved["model"])
            self.ema.module.load_state_dict(weights.get("ema", {}), strict=False)
        self.trained.load_state_dict(weights["trained"], strict=False)

    def _changing_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {key: value.detach().clone() for key, value in model.state_dict().items() if key in self.changing}


def changing_keys(model: nn.Module) -> frozenset[str]:
    """The state-dict entries that training changes: trainable parameters and every buffer (BatchNorm
    statistics); frozen weights are the saved model's already."""
    return frozenset({name for name, p in model.named_parameters() if p.requires_grad}
                     | {name for name, _ in model.named_buffers()})


def wise_ft(zero_shot: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor],
            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zero_shot + alpha * fine_tuned`` for floating-point entries (``torch.lerp``: exactly
    the zero-shot weights at 0, the fine-tuned ones at 1); integer buffers (step counters) are the
    fine-tuned model's."""
    return {key: torch.lerp(zero_shot[key].to(value), value, alpha) if value.is_floating_point() else value
            for key, value in fine_tuned.items()}


# LP-FT's head: the classifier's projections and scale, and paired CLIP towers' own final projections.
# open_clip's image towers: the ViT's ``proj``, the ResNet's attention pool's ``c_proj``, a timm trunk's
# open_clip ``head`` (BiomedCLIP) or timm's own attention pooling (SigLIP); its text towers: the
# transformer's ``text_projection`` (a tensor or a Linear) or a HuggingFace tower's ``proj`` (BiomedCLIP).
# Chinese-CLIP: each tower's ``projection``; SigLIP: its heads, held as each tower's ``projection`` too
# (the image tower's attention pooling).
_IMAGE_HEADS = r"proj|projection\..+|attnpool\.c_proj\..+|head\..+|trunk\.attn_pool\..+"
_TEXT_HEADS = r"clip\.(text\.)?text_projection(\..+)?|clip\.text\.proj\..+|projection\..+"
HEAD = re.compile(rf"^(logit_scale|(image|text)_proj\..+|image_encoder\.backbone\.tower\.({_IMAGE_HEADS})"
                  rf"|text_encoder\.({_TEXT_HEADS}))$")


class LinearProbe:
    """LP-FT (Kumar et al. 2022): for the first ``epochs`` epochs only the head trains, the towers are
    frozen (and in eval mode: their BatchNorm statistics stay); then everything that trains by the
    run's other flags (``--freeze-*``, ``--unlocked-groups``). The phase is a function of the epoch,
    so a resumed fold enters the same one."""

    def __init__(self, model: nn.Module, epochs: int) -> None:
        self.model = model
        self.epochs = epochs
        self.trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def enter(self, epoch: int) -> None:
        if not self.epochs:
            return
        probing = epoch <= self.epochs
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(name in self.trainable and (not probing or bool(HEAD.match(name))))

    def leave(self) -> None:
        """Everything trainable again (a fold stopped early inside the first phase must not hand frozen
        towers to the next fold)."""
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(name in self.trainable)
