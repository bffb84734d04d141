"""LoRA (Hu et al. 2022) through the ``peft`` library: ``--lora-rank R`` (docs/design.md §12).

Which layers get adapters is one rule for every family: the layers of a tower's numbered blocks
(``resblocks.3``, ``blocks.3``, ``layer.3``, ``layers.3``: its attention and MLP), namely

* every ``nn.Linear`` there (timm ViT ``qkv``/``proj``/``fc1``/``fc2``; HuggingFace BERT, MiniLM and
  Chinese-CLIP ``query``/``key``/``value``/``dense`` or ``q_proj``/…/``fc2``; open_clip ``c_fc``/``c_proj``);
* the fused q/k/v weight (``in_proj_weight``) of an ``nn.MultiheadAttention`` there (open_clip's
  towers), through peft's ``target_parameters``: ``W + s·BA`` is computed at each call, ``W`` itself
  is never written. (peft's adapter for a whole ``nn.MultiheadAttention`` adds ``s·BA`` into ``W`` before
  each call and subtracts it after: the frozen weight would drift by rounding, and neither the
  checkpoints' frozen base nor ``--resume`` would be exact.) Its ``out_proj`` is read by the fused
  attention op, never called, so no adapter can act on it: it stays frozen.

Everything else of an adapted tower is frozen (embeddings, norms, biases), except its own final
projection (a paired CLIP's, :data:`training.finetune.HEAD`); the classifier's projections and the
logit scale train as always. A frozen tower (``--freeze-*``) gets no adapters; a trainable tower
without such layers (a ResNet) is refused. Adapters start at ``B = 0``: epoch 0 is the base model.

The frozen base goes into the run's ``frozen_towers.pth`` (training.checkpoint_format), so a checkpoint
holds the adapters and the trainable rest only, and records the base it belongs to (:func:`lora_record`):
its encoder names and a SHA-256 of its weights, which :func:`check_base` compares on loading. Models
loaded to predict or export have the adapters merged into the weights (:func:`merge_adapters`).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from models.clip_model import CLIPClassifier
from training.finetune import HEAD
from utils.errors import ConfigError
from utils.io import CheckpointError

# A module inside a numbered block: "transformer.resblocks.0.mlp.c_fc", "encoder.layer.3.attention".
BLOCK = re.compile(r"(^|\.)\d+\.")
ADAPTER = re.compile(r"(^|\.)lora_[AB]\.")
# Each tower's attribute, the flag that names its encoder and the flag that freezes it.
TOWERS = (("image_encoder", "--image-encoder", "--freeze-image"), ("text_encoder", "--text-encoder", "--freeze-text"))


def lora_targets(tower: nn.Module) -> tuple[list[str], list[str]]:
    """The tower's adapted layers: names of its ``nn.Linear`` modules and of its attention layers' fused
    ``in_proj_weight`` parameters, inside numbered blocks (the module docstring's rule)."""
    modules = dict(tower.named_modules())
    linear, fused = [], []
    for name, module in modules.items():
        if not BLOCK.search(name):
            continue
        if isinstance(module, nn.MultiheadAttention):
            fused.append(f"{name}.in_proj_weight")
        elif isinstance(module, nn.Linear) and not isinstance(modules.get(name.rpartition(".")[0]),
                                                              nn.MultiheadAttention):
            linear.append(name)
    return linear, fused


def is_adapter(name: str) -> bool:
    return bool(ADAPTER.search(name))


def has_adapters(module: nn.Module) -> bool:
    return any(is_adapter(name) for name, _ in module.named_parameters())


def adapt_towers(model: CLIPClassifier, rank: int, encoders: Mapping[str, str]) -> None:
    """Put rank-``rank`` adapters into every trainable tower, in place (0: nothing); ``encoders`` maps
    ``image_encoder``/``text_encoder`` to their names (for the refusal). Afterwards only the adapters,
    a paired tower's own projection and the parts outside the towers train."""
    if not rank:
        return
    # Imported here: peft takes seconds to import, which only a LoRA run should pay.
    from peft import LoraConfig, inject_adapter_in_model

    for attribute, flag, freeze_flag in TOWERS:
        tower = getattr(model, attribute)
        if not any(p.requires_grad for p in tower.parameters()):
            continue  # frozen by --freeze-*: it stays whole and frozen
        linear, fused = lora_targets(tower)
        if not linear and not fused:
            raise ConfigError(f"--lora-rank: {flag} {encoders[attribute]} has no Linear layers in numbered blocks "
                              f"(attention, MLP) to adapt; freeze it with {freeze_flag}, or drop --lora-rank")
        head = {name for name, _ in tower.named_parameters() if HEAD.match(f"{attribute}.{name}")}
        for name in fused:
            last_parameter(tower.get_submodule(name.rpartition(".")[0]), "in_proj_weight")
        config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=linear,
                            target_parameters=fused or None)
        inject_adapter_in_model(config, tower)
        for name, parameter in tower.named_parameters():
            parameter.requires_grad_(is_adapter(name) or name in head)


def last_parameter(module: nn.Module, name: str) -> None:
    """Move ``module``'s parameter ``name`` to the end of its parameters. peft's parametrization takes it out
    at each call and registers it again after, at the end: where it already is, the order of the
    parameters and of the state dict stays the same, which timm's ModelEmaV3 (``--ema-decay``) relies on (it
    pairs the two models' ``state_dict().values()``)."""
    module._parameters[name] = module._parameters.pop(name)


def merge_adapters(module: nn.Module) -> None:
    """Fold every adapter into its weight (``W + s·BA``, checked finite) and put the plain layer back, in
    place: the module then has the architecture and state-dict keys it had before :func:`adapt_towers`."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # as in adapt_towers

    for name, child in list(module.named_children()):
        if not isinstance(child, BaseTunerLayer):
            merge_adapters(child)
        elif hasattr(child, "unload_and_optionally_merge_module"):  # a ParamWrapper (in_proj_weight)
            setattr(module, name, child.unload_and_optionally_merge_module(merge=True, safe_merge=True,
                                                                           adapter_names=None))
        else:
            child.merge(safe_merge=True)
            setattr(module, name, child.get_base_layer())
    module.__dict__.pop("peft_config", None)  # what inject_adapter_in_model left on the tower


def base_keys(model: nn.Module) -> list[str]:
    """The state-dict entries that do not train: the frozen base (and every buffer)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return sorted(key for key in model.state_dict() if key not in trainable)


def weights_sha256(state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> str:
    """SHA-256 of the named tensors: their names, types, shapes and bytes."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lora_record(model: nn.Module, rank: int, encoders: Mapping[str, str],
                state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What every checkpoint of a LoRA run says about its adapters (``{}`` without): the rank, and the
    base they belong to, by name and by the SHA-256 of its weights in ``state`` (the untrained model)."""
    if not rank:
        return {}
    base = ", ".join(f"{flag} {encoders[attribute]}" for attribute, flag, _ in TOWERS)
    return {"lora": {"rank": rank, "base": base, "base_sha256": weights_sha256(state, base_keys(model))}}


def check_base(model: nn.Module, record: Any, path: Any) -> None:
    """Refuse a checkpoint (at ``path``) whose adapters were trained on other base weights than those
    ``model`` now holds."""
    if not (isinstance(record, dict) and isinstance(record.get("base_sha256"), str)):
        raise CheckpointError(f"checkpoint {path} was trained with --lora-rank but does not record the base "
                              "weights of its adapters: not a train_clip checkpoint")
    found = weights_sha256(model.state_dict(), base_keys(model))
    if found != record["base_sha256"]:
        raise CheckpointError(f"checkpoint {path}: its LoRA adapters were trained on other base weights "
                              f"({record.get('base')}: SHA-256 {record['base_sha256'][:12]}…, these are "
                              f"{found[:12]}…); load it with the frozen_towers.pth of its own run")
