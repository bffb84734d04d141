"""Text towers run on the longest description's tokens, not the tokenizer's full context, and the
features are the same as with the full padding (CLIP's causal mask, BERT's attention mask).

Both sides run in float64 (tests/equivalence.py): padding changes the shapes and so the order of the
sums, and float32 rounding of that is another on every CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.text_encoders import build_text_encoder
from tests.equivalence import assert_same_float64


# Descriptions of different lengths: padding differs per row, and the longest sets the width.
TEXTS = ["a handwritten digit zero", "a scanned image of the number 7 written by hand on lined paper",
         "x", "一张手写的数字 3 的扫描图像"]
# The widest sum of CLIP ViT-B/32's text transformer: its MLP's 4 x 512 hidden units.
CLIP_TERMS = 4 * 512


@pytest.fixture(scope="module")
def clip_encoder():
    torch.manual_seed(0)
    return build_text_encoder("clip:ViT-B/32:scratch").eval().double()


def full_context_tokens(encoder) -> torch.Tensor:
    return encoder.tokenizer(TEXTS)  # open_clip's own tokenizer: padded to the 77-token context


def test_clip_tokens_stop_at_the_longest_end_of_text_token(clip_encoder):
    full = full_context_tokens(clip_encoder)
    trimmed = clip_encoder.tokenize(TEXTS)["text"]
    end_of_text = full.argmax(dim=-1)
    assert full.shape[1] == 77
    assert trimmed.shape == (len(TEXTS), int(end_of_text.max()) + 1) and trimmed.shape[1] < 40
    assert torch.equal(trimmed, full[:, :trimmed.shape[1]])  # only padding was cut


def test_clip_features_on_trimmed_tokens_equal_open_clips_on_the_full_context(clip_encoder):
    trimmed = clip_encoder.tokenize(TEXTS)
    with torch.no_grad():
        reference = clip_encoder.clip.encode_text(full_context_tokens(clip_encoder))  # open_clip, 77 positions
        ours = clip_encoder(**trimmed)
        ours_full_length = clip_encoder(text=full_context_tokens(clip_encoder))
    assert ours.shape == reference.shape == (len(TEXTS), 512)
    assert_same_float64(ours, reference, CLIP_TERMS)
    assert_same_float64(ours_full_length, reference, CLIP_TERMS)


def first_layer_gradient(encoder, run) -> torch.Tensor:
    encoder.zero_grad(set_to_none=True)
    run().square().sum().backward()
    gradient = encoder.clip.transformer.resblocks[0].attn.in_proj_weight.grad.clone()
    encoder.zero_grad(set_to_none=True)
    return gradient


def test_clip_gradients_on_trimmed_tokens_equal_the_full_context_ones(clip_encoder):
    trimmed = clip_encoder.tokenize(TEXTS)
    full = full_context_tokens(clip_encoder)
    reference = first_layer_gradient(clip_encoder, lambda: clip_encoder.clip.encode_text(full))
    assert_same_float64(first_layer_gradient(clip_encoder, lambda: clip_encoder(**trimmed)), reference, CLIP_TERMS)


def test_the_float64_comparison_catches_one_real_token_cut(clip_encoder):
    """The comparison above is not loose: trimmed one token too far, the longest description loses
    its end-of-text token, and both features and gradients leave the tolerance."""
    tokens = clip_encoder.tokenize(TEXTS)["text"]
    cut = tokens[:, :-1]
    full = full_context_tokens(clip_encoder)
    with torch.no_grad():
        reference = clip_encoder.clip.encode_text(full)
        with pytest.raises(AssertionError):
            assert_same_float64(clip_encoder(text=cut), reference, CLIP_TERMS)
    reference_gradient = first_layer_gradient(clip_encoder, lambda: clip_encoder.clip.encode_text(full))
    with pytest.raises(AssertionError):
        assert_same_float64(first_layer_gradient(clip_encoder, lambda: clip_encoder(text=cut)), reference_gradient,
                            CLIP_TERMS)


def test_custom_text_tower_is_trimmed_exactly_too(clip_encoder):
    """open_clip's CustomTextCLIP keeps its causal tower in ``.text`` (EVA, PE-Core configs)."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(0)
    vision = {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    tiny = CustomTextCLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval().double()
    original = clip_encoder.clip
    try:
        clip_encoder.clip = tiny  # same tokenizer (CLIP's BPE), another tower class
        trimmed = clip_encoder.tokenize(TEXTS)["text"]
        with torch.no_grad():
            reference = tiny.encode_text(full_context_tokens(clip_encoder))
            ours = clip_encoder(text=trimmed)
    finally:
        clip_encoder.clip = original
    assert trimmed.shape[1] < 40
    assert_same_float64(ours, reference, 4 * text["width"])


def test_bert_features_padded_to_the_longest_equal_those_padded_to_the_maximum(tiny_text_encoder: Path):
    torch.manual_seed(0)
    encoder = build_text_encoder(f"hf:{tiny_text_encoder}:scratch").eval().double()
    longest = encoder.tokenize(TEXTS)
    padded = encoder.tokenizer(TEXTS, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    assert longest["input_ids"].shape[1] < 40 and padded["input_ids"].shape[1] == 128
    with torch.no_grad():
        ours = encoder(**longest)
        reference = encoder(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
    # The widest sum of the 32-wide tiny BERT: attention over the 128 padded positions.
    assert_same_float64(ours, reference, 128)


def test_the_pooled_position_follows_the_towers_pool_type():
    from types import SimpleNamespace

    from models.causal_text import pooled_positions

    tokens = torch.tensor([[49406, 320, 49407, 0, 0], [49406, 320, 1125, 539, 49407]])
    assert pooled_positions(SimpleNamespace(pool_type="argmax"), tokens).tolist() == [2, 4]
    assert pooled_positions(SimpleNamespace(pool_type="eos", eos_id=320), tokens).tolist() == [1, 1]
    assert pooled_positions(SimpleNamespace(text_pool_type="first"), tokens).tolist() == [0, 0]
