"""--accum-steps: K micro-batches of B/K images make exactly the update of one step of B images."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.clip_model import CLIPClassifier
from models.image_encoders import ImageEncoder
from models.loss import class_contrastive_loss
from models.text_encoders import build_text_encoder
from tests.equivalence import assert_same_float64
from training.engine import train_one_epoch

PIXELS = 3 * 8 * 8
BATCH = 8
CPU = torch.device("cpu")


def tiny_model(text_dir, norm: type[nn.Module] = nn.LayerNorm) -> CLIPClassifier:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, 16), norm(16), nn.GELU(), nn.Linear(16, 16))
    text = build_text_encoder(f"hf:{text_dir}", True, None, None)
    texts = [["a bright bar on the left"], ["a bright bar in the middle", "a bar in the centre"], ["a bar right"]]
    return CLIPClassifier(ImageEncoder("tiny", backbone, 16), text, 8, 0.07, texts).double()


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 8, 8, generator=generator, dtype=torch.float64)
    return images, torch.tensor([0, 1, 1, 2, 0, 0, 2, 1]), torch.arange(BATCH)


def one_step(model: CLIPClassifier, accum_steps: int, symmetric: bool) -> None:
    """One training step (a loader of one batch) with plain SGD, so that the update is the gradient;
    from one RNG state, so that the text tower's dropout draws the same masks."""
    torch.manual_seed(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_one_epoch(model, [batch()], optimizer, scheduler, scaler, CPU, None, symmetric, 1, accum_steps=accum_steps)


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("symmetric", [True, False])
def test_four_micro_batches_give_the_gradient_and_update_of_the_whole_batch(tiny_text_encoder, symmetric):
    whole, accumulated = tiny_model(tiny_text_encoder), tiny_model(tiny_text_encoder)
    one_step(whole, 1, symmetric)
    one_step(accumulated, 4, symmetric)
    expected, actual = gradients(whole), gradients(accumulated)
    assert expected.keys() == actual.keys() and any(k.startswith("text_encoder.") for k in expected)
    # Compared as one vector: some gradients are zero up to cancellation (a bias that a normalisation
    # after it cancels), their rounding is that of the terms they cancel, of the size of the other
    # gradients. The widest sums: a gradient of the first layer sums over the batch times its 192 inputs.
    assert_same_float64(flat(actual), flat(expected), BATCH * PIXELS)
    assert_same_float64(flat(dict(accumulated.named_parameters())), flat(dict(whole.named_parameters())),
                        BATCH * PIXELS)


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[name].detach().flatten() for name in sorted(tensors)])


def test_a_loss_per_micro_batch_would_be_another_update_and_is_caught(tiny_text_encoder):
    """The planted fault: each micro-batch's own symmetric loss, averaged (what plain accumulation
    does), differs from the whole batch's gradient by far more than the float64 tolerance."""
    whole, naive = tiny_model(tiny_text_encoder), tiny_model(tiny_text_encoder)
    one_step(whole, 1, True)
    images, labels, _ = batch()
    naive.train()
    torch.manual_seed(2)
    for chunk, chunk_labels in zip(images.chunk(4), labels.chunk(4)):
        image_emb, class_emb, scale = naive(chunk)
        (class_contrastive_loss(image_emb, class_emb, chunk_labels, scale) / 4).backward()
    expected, actual = gradients(whole), gradients(naive)
    with pytest.raises(AssertionError):
        assert_same_float64(flat(actual), flat(expected), BATCH * PIXELS)


def test_batchnorm_statistics_move_once_per_micro_batch(tiny_text_encoder):
    """The graph-free first pass leaves no trace: the running statistics are those of the K
    micro-batches seen once each, as the second pass sees them."""
    model = tiny_model(tiny_text_encoder, nn.BatchNorm1d)
    reference = copy.deepcopy(model.image_encoder).train()
    with torch.no_grad():
        for chunk in batch()[0].chunk(4):
            reference(chunk)
    one_step(model, 4, True)
    norm, expected = model.image_encoder.backbone[2], reference.backbone[2]
    assert int(norm.num_batches_tracked) == 4
    assert torch.equal(norm.running_mean, expected.running_mean)
    assert torch.equal(norm.running_var, expected.running_var)


def test_the_returned_loss_is_the_whole_batchs_and_batchnorm_moves_once_per_micro_batch(tiny_text_encoder):
    from training.accumulation import accumulate_gradients

    model = tiny_model(tiny_text_encoder, nn.BatchNorm1d).train()
    images, labels, _ = batch()
    norm = model.image_encoder.backbone[2]
    loss = accumulate_gradients(model, images, labels, 2, CPU, None, True, torch.amp.GradScaler("cpu", enabled=False))
    assert int(norm.num_batches_tracked) == 2  # the graph-free first pass left no trace
    with torch.no_grad():
        embeddings = torch.cat([model.encode_images(half) for half in images.chunk(2)])
        expected = class_contrastive_loss(embeddings, model.encode_classes(), labels, model.scale(), symmetric=True)
    # Both sides are float64 sums over a micro-batch's images and the 16 features of each embedding.
    assert_same_float64(loss.reshape(1), expected.reshape(1), BATCH * 16)
