"""Device placement and precision, as training and prediction both choose them."""
from __future__ import annotations

import logging

import torch

from utils.device import autocast, describe_device, mixed_precision_dtype, select_device


def test_the_cpu_gets_full_precision_and_a_disabled_autocast(caplog, monkeypatch):
    cpu = select_device(0, force_cpu=True)
    assert cpu == torch.device("cpu")
    assert mixed_precision_dtype(cpu, enabled=True) is None
    a = torch.ones(4, 4)
    with autocast(cpu, None):  # enabled, the CPU's autocast would compute in bfloat16
        assert (a @ a).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    monkeypatch.setattr(logging.getLogger("train_clip"), "propagate", True)  # caplog listens at the root
    with caplog.at_level(logging.INFO, logger="train_clip"):
        describe_device(cpu, None)
    assert "training on the CPU (mixed precision off)" in caplog.text
