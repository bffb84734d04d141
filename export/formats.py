"""The exported model written as ONNX (onnxruntime, any language) and TorchScript (MONAI Deploy
loads ``models/model.ts``), both with a dynamic batch dimension.

ONNX is written by the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). Both
exporters work offline here (torch 2.14, onnx 1.23.2, onnxscript 0.7.2); measured on tiny
starnet_s050, timm:test_vit and Chinese-CLIP towers, both give torch's probabilities within 3e-7
under onnxruntime, but the dynamo exporter takes 8-16 s per model against 1-4 s on two cores and
needs onnxscript; the TorchScript-based one exports every family of tests/e2e/test_export.py with
parity, and reports an op it cannot translate as one ``UnsupportedOperatorError`` naming the op.
torch calls it deprecated: when it goes, ``dynamo=True`` is the switch, and the parity tests say
whether it still holds.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import onnx
import torch
from torch import nn

from utils.errors import UserError

OPSET = 18  # pinned: onnxruntime 1.32 runs it; opset 18 has LayerNormalization and ReduceMean-with-axes-input
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# "Exporting the operator 'aten::linalg_eigh' to ONNX ..." / "... unrecognized namespace testlib::weird. ..."
_OP_PATTERN = re.compile(r"operator '([^']+)'|namespace (\S+?)\.?(?:\s|$)")


class ExportError(UserError, RuntimeError):
    """The model cannot be written in a format; the message names the encoder and the op."""


def example_input(img_size: int, batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, 3, img_size, img_size)


def export_onnx(model: nn.Module, path: Path, img_size: int, encoder: str) -> None:
    """Write ``model`` as ONNX (opset :data:`OPSET`, dynamic batch) and check the file with onnx.checker."""
    try:
        with warnings.catch_warnings(), torch.no_grad(), _plain_attention(), _native_stdout_discarded():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter: the parity tests judge the result
            torch.onnx.export(model, (example_input(img_size),), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise ExportError(f"image encoder {encoder}: its op {_op_name(exc)} cannot be exported to ONNX "
                          f"(opset {OPSET}); export with --format torchscript only") from None
    onnx.checker.check_model(str(path), full_check=True)


def _op_name(exc: Exception) -> str:
    match = _OP_PATTERN.search(str(exc))
    return (match.group(1) or match.group(2)) if match else str(exc).strip().splitlines()[0]


@contextlib.contextmanager
def _plain_attention() -> Iterator[None]:
    """nn.MultiheadAttention (open_clip's towers) without its inference fast path meanwhile: under
    no_grad in eval mode it runs one fused op, aten::_native_multi_head_attention, that ONNX has no
    translation for; its plain path is the same attention in ordinary ops."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _native_stdout_discarded() -> Iterator[None]:
    """Drop what C++ code prints to file descriptor 1 meanwhile. torch's TorchScript exporter dumps
    the whole graph there when an op fails (its setup_onnx_logging tests a function object for
    truth, so its log is always on): the user gets our one-line error instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def export_torchscript(model: nn.Module, path: Path, img_size: int, encoder: str) -> None:
    """Write ``model`` as TorchScript, traced: the graph is the image path only, whatever Python the
    encoder's library uses to build it."""
    try:
        with warnings.catch_warnings(), torch.no_grad(), _plain_attention():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (example_input(img_size),), check_trace=False)
            torch.jit.save(traced, str(path))  # deprecated in favour of torch.export, which MONAI Deploy cannot load
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"image encoder {encoder}: cannot be traced to TorchScript: {first}") from None
