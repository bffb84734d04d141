"""The scored model of training.finetune: the EMA is the running average of the trained weights
(computed again here), WiSE-FT interpolates exactly, and the training weights come back on resume."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.clip_helpers import open_clip_layout_pair
from tests.equivalence import assert_same_float64
from tests.training.test_accumulation import batch, tiny_model
from training.config import TrainConfig
from training.engine import train_one_epoch
from training.finetune import LinearProbe, ScoredModel, wise_ft

CPU = torch.device("cpu")
DECAY = 0.9


def train_steps(model, scored: ScoredModel, steps: int, seen: list[dict[str, torch.Tensor]]) -> None:
    """``steps`` AdamW steps on the tiny batch; ``seen`` gets the trained weights after each."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def after_step() -> None:
        scored.after_step()
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    train_one_epoch(model, [batch()] * steps, optimizer, scheduler, scaler, CPU, None, True, 1, after_step=after_step)


def test_the_evaluated_weights_are_the_running_average_of_the_trained_ones(tiny_text_encoder):
    model = tiny_model(tiny_text_encoder)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    scored = ScoredModel(model, TrainConfig(data_dir="x", ema_decay=DECAY), initial)
    seen: list[dict[str, torch.Tensor]] = []
    train_steps(model, scored, 4, seen)
    evaluated = scored.model().state_dict()
    for key, start in initial.items():
        if not start.is_floating_point():
            continue
        average = start.clone()
        for weights in seen:  # the EMA's definition, step by step
            average = DECAY * average + (1 - DECAY) * weights[key]
        # Four steps of a lerp against this recurrence: a few roundings of the weights' size.
        assert_same_float64(evaluated[key], average, 4)
    # The planted fault, evaluating the trained weights instead, is far outside that tolerance.
    trained = model.state_dict()["image_encoder.backbone.1.weight"]
    with pytest.raises(AssertionError):
        assert_same_float64(trained, evaluated["image_encoder.backbone.1.weight"], 4)


@pytest.mark.parametrize("ema_decay", [0.0, DECAY])
def test_resuming_restores_the_trained_weights_beside_the_saved_model(tiny_text_encoder, ema_decay):
    model = tiny_model(tiny_text_encoder)
    initial = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(data_dir="x", ema_decay=ema_decay, wise_alpha=0.5, image_encoder="clip:ViT-B/32")
    scored = ScoredModel(model, cfg, initial)
    train_steps(model, scored, 2, [])
    saved = {"model": scored.model().state_dict(), **scored.training_weights()}
    fresh = tiny_model(tiny_text_encoder)
    fresh.load_state_dict(saved["model"])  # what run_fold does first, then:
    restored = ScoredModel(fresh, cfg, initial)
    restored.restore(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    for key, value in scored.model().state_dict().items():
        assert torch.equal(restored.model().state_dict()[key], value), key


def test_wise_ft_is_exactly_each_end_and_the_line_between():
    generator = torch.Generator().manual_seed(0)
    zero = {"w": torch.randn(5, 7, generator=generator, dtype=torch.float64), "steps": torch.tensor(3)}
    tuned = {"w": torch.randn(5, 7, generator=generator, dtype=torch.float64), "steps": torch.tensor(9)}
    assert torch.equal(wise_ft(zero, tuned, 0.0)["w"], zero["w"])
    assert torch.equal(wise_ft(zero, tuned, 1.0)["w"], tuned["w"])
    assert_same_float64(wise_ft(zero, tuned, 0.25)["w"], 0.75 * zero["w"] + 0.25 * tuned["w"], 2)
    assert int(wise_ft(zero, tuned, 0.25)["steps"]) == 9  # integer buffers: the fine-tuned model's


def test_lp_ft_first_phase_moves_only_the_head_then_everything(tiny_text_encoder):
    model = tiny_model(tiny_text_encoder, torch.nn.BatchNorm1d)  # BatchNorm: its statistics must stay too
    probe = LinearProbe(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scored = ScoredModel(model, TrainConfig(data_dir="x"), before)
    probe.enter(1)
    train_steps(model, scored, 2, [])
    after = model.state_dict()
    towers = [key for key in before if key.startswith(("image_encoder.", "text_encoder."))]
    assert len(towers) > 20 and any("running_mean" in key for key in towers)
    changed = [key for key in towers if not torch.equal(after[key], before[key])]
    assert changed == []
    head = [key for key in before if key not in towers]
    assert sorted(head) == ["image_proj.bias", "image_proj.weight", "logit_scale", "text_proj.bias", "text_proj.weight"]
    assert all(not torch.equal(after[key], before[key]) for key in head)
    probe.enter(2)  # the second phase: the towers train
    train_steps(model, scored, 1, [])
    for key in ("image_encoder.backbone.1.weight", "text_encoder.model.encoder.layer.0.output.dense.weight"):
        assert not torch.equal(model.state_dict()[key], before[key]), key


# The library's names of each open_clip layout's head: the towers' final projections.
OPEN_CLIP_HEADS = {"vit": ("visual.proj", "text_projection"), "resnet": ("visual.attnpool.c_proj.", "text_projection"),
                   "timm-hf": ("visual.head.", "text.proj."), "timm-map": ("visual.trunk.attn_pool.", "text.text_projection.")}
# Where a paired open_clip model's towers live in the classifier.
OPEN_CLIP_PREFIXES = (("image_encoder.backbone.tower.", "visual."), ("text_encoder.clip.", ""))


def library_name(name: str) -> str | None:
    for ours, library in OPEN_CLIP_PREFIXES:
        if name.startswith(ours):
            return library + name[len(ours):]
    return None


@pytest.mark.parametrize("kind", OPEN_CLIP_HEADS)
def test_lp_ft_head_is_each_open_clip_towers_final_projection(kind, tmp_path, monkeypatch, tiny_text_encoder):
    _, model, library = open_clip_layout_pair(tmp_path, monkeypatch, kind, tiny_text_encoder)
    towers = {library_name(n): n for n, _ in model.named_parameters() if library_name(n) is not None}
    assert set(towers) == {n for n, _ in library.named_parameters()}
    expected = {ours for theirs, ours in towers.items() if theirs.startswith(OPEN_CLIP_HEADS[kind])}
    assert {n.split(".")[0] for n in expected} == {"image_encoder", "text_encoder"}  # both towers have a head
    LinearProbe(model, 1).enter(1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected | {"logit_scale"}
