import math

import torch
import torch.nn.functional as F

from models.loss import class_contrastive_loss
from tests.equivalence import assert_same_float64


def one_hot_embeddings(labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    classes = torch.eye(n_classes)
    return classes[labels].clone(), classes


def naive_clip_loss(image_emb, text_emb, scale):
    """Row i ↔ text i, every other row negative: what the design rejects."""
    logits = scale * image_emb @ text_emb.t()
    targets = torch.arange(len(image_emb))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def test_no_penalty_for_matching_own_class_text_in_another_row():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    image_emb, class_emb = one_hot_embeddings(labels, 3)
    scale = torch.tensor(100.0)
    loss = class_contrastive_loss(image_emb, class_emb, labels, scale)
    assert loss.item() < 1e-6
    # The per-row CLIP loss punishes the same perfect embeddings because rows share texts.
    assert naive_clip_loss(image_emb, class_emb[labels], scale).item() > math.log(2) / 2


def test_image_gradient_does_not_push_away_from_own_class_in_another_row():
    # Rows 0 and 1 share class 0 (so, in a per-row loss, each other's text is a negative).
    labels = torch.tensor([0, 0, 1])
    image_emb = F.normalize(torch.tensor([[1.0, 0.3], [1.0, 0.3], [0.1, 1.0]]), dim=1).requires_grad_()
    class_emb = torch.eye(2)
    class_contrastive_loss(image_emb, class_emb, labels, torch.tensor(10.0)).backward()
    # Gradient descent moves each image towards its own class direction.
    for row, label in enumerate(labels.tolist()):
        assert -image_emb.grad[row, label] > 0


def test_loss_is_invariant_to_batch_order():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    image_emb = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=1)
    class_emb = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1)
    perm = torch.randperm(7)
    scale = torch.tensor(14.0, dtype=torch.float64)
    a = class_contrastive_loss(image_emb, class_emb, labels, scale)
    b = class_contrastive_loss(image_emb[perm], class_emb, labels[perm], scale)
    assert_same_float64(a, b, 7 * 8)  # another order of the batch's sums


def test_ce_mode_is_plain_cross_entropy_over_classes():
    torch.manual_seed(1)
    labels = torch.tensor([0, 1, 1, 2])
    image_emb = F.normalize(torch.randn(4, 5), dim=1)
    class_emb = F.normalize(torch.randn(3, 5), dim=1)
    scale = torch.tensor(20.0)
    expected = F.cross_entropy(scale * image_emb @ class_emb.t(), labels)
    got = class_contrastive_loss(image_emb, class_emb, labels, scale, symmetric=False)
    assert torch.allclose(got, expected)
    assert class_contrastive_loss(image_emb, class_emb, labels, scale) > got
