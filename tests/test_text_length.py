"""Text towers run on the longest description's tokens, not the tokenizer's full context, and the
features are the same as with the full padding (CLIP's causal mask, BERT's attention mask)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.text_encoders import build_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

# Descriptions of different lengths: padding differs per row, and the longest sets the width.
TEXTS = ["a handwritten digit zero", "a scanned image of the number 7 written by hand on lined paper",
         "x", "一张手写的数字 3 的扫描图像"]


@pytest.fixture(scope="module")
def clip_encoder():
    torch.manual_seed(0)
    return build_text_encoder("clip:ViT-B/32:scratch").eval()


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
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_full_length, reference, atol=1e-5, rtol=1e-5)


def test_clip_gradients_on_trimmed_tokens_equal_the_full_context_ones(clip_encoder):
    def gradient(run) -> torch.Tensor:
        clip_encoder.zero_grad(set_to_none=True)
        run().square().sum().backward()
        return clip_encoder.clip.transformer.resblocks[0].attn.in_proj_weight.grad.clone()

    trimmed = clip_encoder.tokenize(TEXTS)
    reference = gradient(lambda: clip_encoder.clip.encode_text(full_context_tokens(clip_encoder)))
    torch.testing.assert_close(gradient(lambda: clip_encoder(**trimmed)), reference, atol=1e-5, rtol=1e-4)
    clip_encoder.zero_grad(set_to_none=True)


def test_custom_text_tower_is_trimmed_exactly_too(clip_encoder):
    """open_clip's CustomTextCLIP keeps its causal tower in ``.text`` (EVA, PE-Core configs)."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(0)
    vision = {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    tiny = CustomTextCLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
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
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_bert_features_padded_to_the_longest_equal_those_padded_to_the_maximum(tiny_text_encoder: Path):
    torch.manual_seed(0)
    encoder = build_text_encoder(f"hf:{tiny_text_encoder}:scratch").eval()
    longest = encoder.tokenize(TEXTS)
    padded = encoder.tokenizer(TEXTS, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    assert longest["input_ids"].shape[1] < 40 and padded["input_ids"].shape[1] == 128
    with torch.no_grad():
        ours = encoder(**longest)
        reference = encoder(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
