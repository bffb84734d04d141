"""Model layer: encoder registries, the CLIP classifier and its loss.

Imports ``utils`` only, never ``data`` (docs/design.md §2).
"""
from models.clip_model import CLIPClassifier, build_clip_model
from models.loss import class_contrastive_loss

__all__ = ["CLIPClassifier", "build_clip_model", "class_contrastive_loss"]
