"""open_clip's causal text transformer on tokens shorter than its context.

Class descriptions are ~10 tokens; CLIP's tokenizer pads them to 77 and open_clip's ``encode_text``
runs all 77 positions. Under the causal mask a token never sees the padding after it, so the
features pooled at the end-of-text token are the same on tokens cut after the longest description's
end-of-text token (``tests/models/test_causal_text.py`` proves it against ``encode_text``).
"""
from __future__ import annotations

import torch
from torch import nn


_CAUSAL_TOWER_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")


def causal_text_tower(model: nn.Module) -> nn.Module | None:
    """The module holding a plain causal text transformer pooled at a fixed token: open_clip's
    ``CLIP`` itself, or the ``TextTransformer`` of a ``CustomTextCLIP``. None for other towers
    (HuggingFace towers, CoCa's class token, padding masks, 'last' pooling, which moves with the
    padding): they keep open_clip's own ``encode_text`` on full-length tokens."""
    tower = getattr(model, "text", model)
    if not all(hasattr(tower, part) for part in _CAUSAL_TOWER_PARTS) or tower.attn_mask is None:
        return None
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        return None
    pool_type, eos_id = _pool_settings(tower)
    if pool_type not in ("argmax", "eos", "first") or (pool_type == "eos" and eos_id is None):
        return None
    return tower


def _pool_settings(tower: nn.Module) -> tuple[str, int | None]:
    # open_clip's CLIP copies its text tower's settings under text_* names.
    if hasattr(tower, "text_pool_type"):
        return tower.text_pool_type, getattr(tower, "text_eos_id", None)
    return tower.pool_type, getattr(tower, "eos_id", None)


def pooled_positions(tower: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """The position each row's feature is pooled from, as open_clip's ``text_global_pool``."""
    pool_type, eos_id = _pool_settings(tower)
    if pool_type == "argmax":  # CLIP: the end-of-text token has the highest id
        return text.argmax(dim=-1)
    if pool_type == "eos":
        return (text == eos_id).int().argmax(dim=-1)
    return torch.zeros(text.shape[0], dtype=torch.long, device=text.device)  # "first"


def encode_causal(tower: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` on tokens of any length up to the context: the position
    embeddings and the causal mask are cut to the tokens' length (open_clip's ``CLIP`` adds its
    full 77 positions and mask, so it accepts only full-length tokens)."""
    length = text.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(text).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:length, :length]))
    pooled = x[torch.arange(x.shape[0], device=x.device), pooled_positions(tower, text)]
    projection = tower.text_projection
    if projection is None:
        return pooled
    return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
