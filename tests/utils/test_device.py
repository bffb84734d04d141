"""Device placement and precision, as training and prediction both choose them."""
from __future__ import annotations

import logging

import torch

from utils.device import autocast, compile_mode, describe_device, mixed_precision_dtype, select_device


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


def test_cuda_graphs_are_asked_of_torch_compile_on_cuda_only_and_the_cpu_says_it_falls_back(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("train_clip"), "propagate", True)  # caplog listens at the root
    with caplog.at_level(logging.WARNING, logger="train_clip"):
        assert compile_mode("default", torch.device("cpu")) is None  # torch.compile's own default, as before
        assert compile_mode("default", torch.device("cuda", 0)) is None
        assert not caplog.text
        assert compile_mode("reduce-overhead", torch.device("cuda", 0)) == "reduce-overhead"
        assert not caplog.text
        assert compile_mode("reduce-overhead", torch.device("cpu")) is None
    assert "--compile-mode reduce-overhead records CUDA graphs, which need a GPU" in caplog.text
    assert "default mode on cpu" in caplog.text
