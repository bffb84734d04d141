"""Heatmaps of where the model looks (reporting/saliency.py).

For every image-encoder family a tiny model is trained from random weights, for a few dozen
steps, on gray images whose only difference between the classes is the colour of a small square
placed anywhere; the heatmap of each test image must then peak on (or next to) its square. CNNs
train at 64 px and are explained at 128 px, where their last stage is a 4×4 grid (at 64 px it is
2×2); the ViT has 16-pixel patches, so 64 px gives it a 4×4 grid already.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from data.transforms import ToModelInput
from models.clip_model import CLIPClassifier, build_clip_model
from models.image_encoders import IMAGE_ENCODERS, ImageEncoder, build_image_encoder
from models.loss import class_contrastive_loss
from reporting.saliency import (EXPLAIN_METHODS, TARGET_LAYER_RULES, ClassLogits, SaliencyError, class_heatmaps,
                                target_layer, tokens_to_grid, unique_file_names)
from tests.helpers import make_tiny_text_encoder
from reporting import saliency
from training.config import config_fields

SQUARE = 16  # side of the planted square, in pixels
COLOURS = ((230, 40, 40), (40, 40, 230))  # class 0: a red square, class 1: a blue one
TRAIN_IMAGES, BATCH, STEPS = 96, 16, 30
TEST_IMAGES, MIN_HITS = 12, 8


@dataclass
class Planted:
    images: torch.Tensor  # (N, 3, S, S) model inputs
    labels: torch.Tensor
    corners: np.ndarray  # (N, 2) row, column of each square's top-left pixel


def planted_squares(n: int, size: int, seed: int) -> Planted:
    """Faint gray noise with one square at a random place; the square's colour is the class."""
    rng = np.random.default_rng(seed)
    to_input = ToModelInput()
    images, corners = [], rng.integers(0, size - SQUARE + 1, size=(n, 2))
    labels = np.arange(n) % len(COLOURS)
    for (row, col), label in zip(corners, labels):
        pixels = rng.integers(118, 139, size=(size, size, 1)).repeat(3, axis=2).astype(np.uint8)
        pixels[row:row + SQUARE, col:col + SQUARE] = COLOURS[label]
        images.append(to_input(torch.from_numpy(pixels).permute(2, 0, 1)))
    return Planted(torch.stack(images), torch.as_tensor(labels), corners)


@pytest.fixture(scope="module")
def seeded_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT, but the same weights in every session: the trained models below are then
    the same in every session too."""
    torch.manual_seed(0)
    return make_tiny_text_encoder(tmp_path_factory.mktemp("seeded_bert"))


def train_tiny(name: str, img_size: int, text_encoder: Path) -> CLIPClassifier:
    torch.manual_seed(0)
    model = build_clip_model(name, f"hf:{text_encoder}", 32, 0.07, [["red"], ["blue"]], freeze_text=True,
                             img_size=img_size)
    data = planted_squares(TRAIN_IMAGES, img_size, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(STEPS):
        batch = torch.arange(BATCH) + BATCH * (step % (TRAIN_IMAGES // BATCH))
        image_emb, class_emb, scale = model(data.images[batch])
        loss = class_contrastive_loss(image_emb, class_emb, data.labels[batch], scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recalibrate_batch_norm(model, data.images)
    return model.eval()


@torch.no_grad()
def recalibrate_batch_norm(model: CLIPClassifier, images: torch.Tensor) -> None:
    """BatchNorm statistics of the trained weights: after a few dozen steps the running averages
    still mostly remember the random initialisation, and eval mode would use them."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the passes below
    model.train()
    for batch in images.split(BATCH):
        model.encode_images(batch)


def peak_hits(heatmaps: np.ndarray, corners: np.ndarray, margin: int) -> list[bool]:
    """Whether each heatmap's maximum lies on its square, or within ``margin`` pixels of it."""
    hits = []
    for heatmap, (row, col) in zip(heatmaps, corners):
        peak_row, peak_col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
        hits.append(bool(row - margin <= peak_row < row + SQUARE + margin
                         and col - margin <= peak_col < col + SQUARE + margin))
    return hits


@pytest.mark.parametrize("name, test_size, cell", [
    ("resnet18", 128, 32),
    ("timm:convnext_atto", 128, 32),  # the rule of the ConvNeXt family and of timm CNNs
    ("starnet_s050", 128, 32),
    ("efficientnet-b0", 128, 32),  # its stride-8 stage: a 16×16 map
    ("timm:vit_tiny_patch16_224", 64, 16),  # the rule of the ViT family
])
def test_heatmap_peaks_on_the_square_that_decides_the_class(name, test_size, cell, seeded_text_encoder):
    model = train_tiny(name, 64, seeded_text_encoder)
    test = planted_squares(TEST_IMAGES, test_size, seed=1)
    layer = target_layer(model)
    # Two classes, so the target is the true class's probability: its gradient is the difference of
    # the two logits' gradients, which only the square explains, whichever colour the model learned
    # to detect (a model may learn "red or not", and a logit of "not red" has no place to point at).
    targets = [ClassifierOutputSoftmaxTarget(int(k)) for k in test.labels]
    # Grad-CAM++: on these barely trained models plain Grad-CAM also finds the square, but on StarNet
    # only for 7 of the 12 images (Grad-CAM++ 10; ResNet, ConvNeXt, ViT 10-12 with either).
    with EXPLAIN_METHODS["gradcam++"](model=ClassLogits.of(model), target_layers=[layer.module],
                                      reshape_transform=layer.reshape) as cam:
        heatmaps = cam(input_tensor=test.images, targets=targets)
    assert heatmaps.shape == (TEST_IMAGES, test_size, test_size)
    # Within half a grid cell: the heatmap is the grid scaled up, so its peak is a cell's centre.
    hits = peak_hits(heatmaps, test.corners, margin=cell // 2)
    assert sum(hits) >= MIN_HITS, hits


# ---------------------------------------------------------------------------------------------
# The parts: rule table, token folding, a frozen tower, file names
# ---------------------------------------------------------------------------------------------
def test_every_family_of_the_registry_has_a_target_layer_rule():
    families = {spec.family for spec in IMAGE_ENCODERS.values()} | {"timm"}
    assert families <= set(TARGET_LAYER_RULES)


@pytest.mark.parametrize("name, expected", [
    ("convnext-tiny", lambda backbone: backbone.stages[-1]),  # the rule timm:convnext_atto gets above
    ("vit", lambda backbone: backbone.blocks[-1].norm1),  # the rule timm:vit_tiny_patch16_224 gets above
    ("efficientnet-b0", lambda backbone: backbone.features[3]),
])
def test_registry_names_get_their_family_layer(name, expected, tiny_text_encoder):
    model = build_clip_model(name, f"hf:{tiny_text_encoder}", 8, 0.07, [["a"], ["b"]], img_size=32)
    assert target_layer(model).module is expected(model.image_encoder.backbone)


@pytest.mark.parametrize("name, img_size, expected", [
    ("resnet18", 224, lambda backbone: backbone.layer4),  # 7×7: the deepest stage
    ("resnet18", 64, lambda backbone: backbone.layer3),  # layer4 would be 2×2
    ("resnet18", 32, lambda backbone: backbone.layer2),  # the digits demo: layer4 would be one cell
    ("efficientnet-b0", 64, lambda backbone: backbone.features[3]),  # stride 8: deeper does not localise
    ("starnet_s050", 64, lambda backbone: backbone.stages[-2]),
])
def test_the_deepest_layer_with_a_map_of_at_least_4x4_is_used_at_small_sizes(name, img_size, expected,
                                                                             tiny_text_encoder):
    model = build_clip_model(name, f"hf:{tiny_text_encoder}", 8, 0.07, [["a"], ["b"]], img_size=img_size).eval()
    assert target_layer(model, img_size).module is expected(model.image_encoder.backbone)
    images = torch.randn(2, 3, img_size, img_size)
    # EigenCAM needs no trained gradients (Grad-CAM of an untrained model may be all zero): a map
    # of one cell would still be uniform.
    heatmaps = class_heatmaps(ClassLogits.of(model), images, [0, 1], "eigencam")
    assert heatmaps.shape == (2, img_size, img_size) and heatmaps.std() > 0


def test_a_timm_model_without_feature_maps_is_a_one_line_error():
    encoder = ImageEncoder("timm:resnet10t", torch.nn.Linear(3, 4), 4)  # no feature_info to find a stage in
    with pytest.raises(SaliencyError, match="no heatmap layer is known for image encoder timm:resnet10t"):
        target_layer(SimpleNamespace(image_encoder=encoder))


def test_channels_last_timm_feature_maps_are_turned_channels_first():
    # timm:mambaout_femto keeps its feature maps (B, h, w, C), as Swin does.
    model = SimpleNamespace(image_encoder=build_image_encoder("timm:mambaout_femto", img_size=32))
    layer = target_layer(model)
    assert layer.module is model.image_encoder.backbone.stages[-1]
    features = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)  # (B, h, w, C)
    assert torch.equal(layer.reshape(features)[0, 4], features[0, :, :, 4])


def test_explain_methods_are_the_config_choices():
    field = next(f for f in config_fields() if f.name == "explain_method")
    assert set(field.metadata["choices"]) == set(EXPLAIN_METHODS) and field.default in EXPLAIN_METHODS


def test_vit_tokens_fold_into_the_patch_grid_without_the_class_token():
    tokens = torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).view(1, 7, 1).repeat(1, 1, 2)  # class token, 2×3 patches
    grid = tokens_to_grid(tokens, prefix_tokens=1, grid=(2, 3))
    assert grid.shape == (1, 2, 2, 3)
    assert grid[0, 1].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_a_frozen_image_tower_still_gets_a_heatmap(tiny_text_encoder):
    torch.manual_seed(0)
    model = build_clip_model("starnet_s050", f"hf:{tiny_text_encoder}", 8, 0.07, [["a"], ["b"]],
                             freeze_image=True, freeze_text=True, img_size=64)
    images = planted_squares(2, 64, seed=0).images
    heatmaps = class_heatmaps(ClassLogits.of(model), images, [0, 1])
    # Without an input that asks for a gradient, grad-cam finds no gradient to weight and fails.
    assert heatmaps.shape == (2, 64, 64) and np.isfinite(heatmaps).all()


def test_a_single_cell_heatmap_layer_is_warned_about(tiny_text_encoder, caplog):
    # A ViT has one candidate layer, its patch grid: one 16-px patch at 16 pixels.
    name = "timm:vit_tiny_patch16_224"
    model = build_clip_model(name, f"hf:{tiny_text_encoder}", 8, 0.07, [["a"], ["b"]], img_size=16)
    saliency._warn_single_cell.cache_clear()  # said once per session: another test may have said it
    class_heatmaps(ClassLogits.of(model), planted_squares(2, 16, seed=0).images, [0, 1])
    assert f"Heatmaps of {name} at 16 pixels are uniform" in caplog.text


def test_picture_names_are_safe_unique_and_keep_any_language():
    names = unique_file_names(["病例 1/x", "病例 1_x", "病例 1_x_2", 'a:b*c?"d<e>|f\\g', "../up", "长" * 100])
    assert names[:5] == ["病例 1_x.png", "病例 1_x_2.png", "病例 1_x_2_2.png", "a_b_c_d_e_f_g.png", "up.png"]
    assert names[5].startswith("长") and len(names[5].encode("utf-8")) <= 255


@pytest.mark.parametrize("layout, size", [("resnet", 32), ("timm-hf", 224), ("timm-map", 224)])
def test_open_clip_resnet_and_timm_towers_get_heatmaps(layout, size, tmp_path, monkeypatch, tiny_text_encoder):
    from tests.clip_helpers import open_clip_layout_pair

    model = open_clip_layout_pair(tmp_path, monkeypatch, layout, tiny_text_encoder)[1].eval()
    visual = model.image_encoder.backbone.tower
    # a timm trunk: its last block (a ViT); open_clip's ResNet at 32 px: layer2, the deepest map of >= 4x4 cells
    expected = visual.layer2 if layout == "resnet" else visual.trunk.blocks[-1].norm1
    assert target_layer(model, size).module is expected
    torch.manual_seed(0)
    heatmaps = class_heatmaps(ClassLogits.of(model), torch.randn(2, 3, size, size), [0, 1])
    assert heatmaps.shape == (2, size, size) and np.isfinite(heatmaps).all() and heatmaps.std() > 0
