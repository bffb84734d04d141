"""The class-level contrastive loss (docs/design.md §4): no false negatives from repeated classes.

Each image is scored against the C class embeddings, not against the B texts of the batch
rows, so an image that matches its own class's text is never pushed away from it because
another row of the batch happens to carry that text.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_contrastive_loss(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                           logit_scale: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Loss of a batch.

    * image → class: cross-entropy of ``scale · image_emb @ class_emb.T`` against ``labels``;
    * class → image (``symmetric``): for each class present in the batch, a softmax over the
      batch's images whose target is spread evenly over that class's images (as in UniCL).
      It is written as the KL divergence from that target, so a perfect model scores 0 even
      when a class has several images in the batch.

    Embeddings are L2-normalised; the loss is computed in float32 whatever the AMP dtype (in
    float64 for float64 embeddings, as the equivalence tests run it).
    """
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    logits = logit_scale.to(dtype) * image_emb.to(dtype) @ class_emb.to(dtype).t()  # (B, C)
    loss = F.cross_entropy(logits, labels)
    if not symmetric:
        return loss
    present = torch.unique(labels)  # (P,)
    target = (labels.unsqueeze(0) == present.unsqueeze(1)).to(dtype)  # (P, B)
    target = target / target.sum(dim=1, keepdim=True)
    log_probs = F.log_softmax(logits.t()[present], dim=1)  # (P, B)
    class_to_image = (torch.special.xlogy(target, target) - target * log_probs).sum(dim=1).mean()
    return loss + class_to_image
