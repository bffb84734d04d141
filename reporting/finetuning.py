"""The fine-tuning methods of a run, in words: the methods paragraph's sentences and the
leaderboard's short label (one home for what each --flag did)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

# Each method: its config key, the value that means "off", a short label and the methods sentence.
METHODS: tuple[tuple[str, Any, Callable[[Any], str], Callable[[Any], str]], ...] = (
    ("accum_steps", 1, lambda k: f"accum ×{k}",
     lambda k: f"Each step's batch was processed as {k} micro-batches whose gradients were accumulated "
               "into that of the whole batch (the loss of all its images; an exact equivalent of one step)."),
    ("ema_decay", 0.0, lambda d: f"EMA {d:g}",
     lambda d: f"The model evaluated, chosen and saved was an exponential moving average of the weights (decay {d:g} "
               "per step, timm's ModelEmaV3)."),
    ("wise_alpha", 1.0, lambda a: f"WiSE-FT α={a:g}",
     lambda a: f"The weights evaluated and saved were WiSE-FT's (Wortsman et al. 2022), interpolated between the "
               f"zero-shot and the fine-tuned model: (1 − {a:g})·θ_zero-shot + {a:g}·θ_fine-tuned."),
    ("lp_epochs", 0, lambda n: f"LP-FT {n} ep",
     lambda n: f"Training followed LP-FT (Kumar et al. 2022): for the first {n} epoch(s) only the projections and "
               "the logit scale were trained, the encoders frozen; then all trainable weights."),
    ("layer_decay", 1.0, lambda d: f"layer decay {d:g}",
     lambda d: f"The image encoder's learning rate decayed layer-wise by {d:g} per layer group from its last group "
               "towards its input (as in BEiT)."),
    ("unlocked_groups", 0, lambda n: f"last {n} groups",
     lambda n: f"Only the last {n} layer group(s) of the image encoder were trained; the earlier ones, their "
               "normalisation statistics included, stayed fixed."),
    ("lora_rank", 0, lambda r: f"LoRA r={r}",
     lambda r: f"The encoders were fine-tuned with LoRA (Hu et al. 2022, the peft library) of rank {r}: low-rank "
               "adapters of their attention and MLP layers were trained, their pretrained weights frozen (the "
               "projections and the logit scale trained); predictions use the adapters merged into the weights."),
)


def used_methods(config: Mapping[str, Any]) -> list[tuple[Any, Callable[[Any], str], Callable[[Any], str]]]:
    return [(config[key], label, sentence) for key, off, label, sentence in METHODS
            if config.get(key, off) != off]


def finetuning_label(config: Mapping[str, Any]) -> str:
    """``accum ×4, EMA 0.999``; empty for the plain recipe."""
    return ", ".join(label(value) for value, label, _ in used_methods(config))


def finetuning_sentences(config: Mapping[str, Any]) -> list[str]:
    return [sentence(value) for value, _, sentence in used_methods(config)]
