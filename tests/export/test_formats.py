"""ONNX and TorchScript files of the exported graph: checked, dynamic batch, and an op ONNX lacks
reported in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from export.formats import OPSET, ExportError, export_onnx, export_torchscript
from export.graph import ExportedClassifier
from tests.equivalence import PROBABILITY_TOLERANCE
from tests.export.fold_models import IMG, tiny_fold_models



def test_both_files_run_any_batch_size_as_the_graph_does(tiny_text_encoder: Path, tmp_path: Path) -> None:
    graph = ExportedClassifier(tiny_fold_models(tiny_text_encoder))
    export_onnx(graph, tmp_path / "m.onnx", IMG, "starnet_s050")
    export_torchscript(graph, tmp_path / "m.ts", IMG, "starnet_s050")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    for batch in (1, 5):  # exported with a batch of 2
        images = torch.randn(batch, 3, IMG, IMG)
        with torch.no_grad():
            expected = graph(images).numpy()
            from_ts = scripted(images).numpy()
        from_onnx = session.run(None, {"image": images.numpy()})[0]
        assert from_onnx.shape == expected.shape == (batch, 3)
        # Two float32 programs of one graph: the tests' probability budget (tests/equivalence.py).
        np.testing.assert_allclose(from_onnx, expected, rtol=0, atol=PROBABILITY_TOLERANCE)
        np.testing.assert_allclose(from_ts, expected, rtol=0, atol=PROBABILITY_TOLERANCE)


class _Eigen(nn.Module):
    """An encoder whose op ONNX has no translation for (an eigen-decomposition)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        gram = images[:, 0] @ images[:, 0].transpose(1, 2)
        return torch.linalg.eigh(gram)[0]


def test_an_op_onnx_cannot_express_fails_in_one_line_naming_encoder_and_op(tmp_path: Path,
                                                                          capfd: pytest.CaptureFixture) -> None:
    with pytest.raises(ExportError) as caught:
        export_onnx(_Eigen(), tmp_path / "m.onnx", 8, "timm:eigen_net")
    message = str(caught.value)
    assert message.splitlines() == [message]
    assert "image encoder timm:eigen_net" in message and "aten::linalg_eigh" in message
    assert not capfd.readouterr().out  # torch's dump of the graph is not shown
    export_torchscript(_Eigen(), tmp_path / "m.ts", 8, "timm:eigen_net")  # the way out the message names
    assert (tmp_path / "m.ts").is_file()
