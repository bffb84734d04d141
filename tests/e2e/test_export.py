"""``python -m export`` on a real run of every image-encoder family: the exported ONNX model (onnxruntime)
and TorchScript model give predict.py's probabilities on the run folder, for one fold and for the
ensemble, and the torch-free runner writes predict.py's CSV.

Each family trains one tiny run (1 epoch, 2 folds, 32-px images, --select-on last so both folds'
trained models differ) shared by its tests. ConvNeXt and ViT are timm's ConvNeXt and
VisionTransformer classes, as the registry's ``convnext-*`` and ``vit`` rows build them, at timm's
test sizes (``test_convnext``, ``vit_tiny``): the registry's 28M- and 86M-parameter rows would add
nothing but minutes.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime
import pytest
import torch

import predict
import train_clip
from data.images import decode_image
from data.transforms import ToModelInput
from export import __main__ as export_cli
from export import predict as runner
from tests.clip_helpers import TINY_CLIP_NAME, cache_tiny_open_clip, make_tiny_chinese_clip, make_tiny_siglip
from tests.equivalence import PROBABILITY_TOLERANCE
from tests.helpers import csv_probabilities, make_image_tree, read_prediction_csv
from tests.weights_helpers import point_caches_at

pytestmark = [pytest.mark.slow]

CLASSES = {"cat_a": 6, "股骨柄B": 6}


def _plain(image: str) -> Callable[[Path, pytest.MonkeyPatch, Path], tuple[str, str]]:
    return lambda root, mp, bert: (image, f"hf:{bert}")


def _open_clip(root: Path, mp: pytest.MonkeyPatch, bert: Path) -> tuple[str, str]:
    _, hub_cache = point_caches_at(mp, root / "caches")
    cache_tiny_open_clip(hub_cache, root / "tiny_clip_repo")
    # A new projection on the tower: paired with its own random text tower, the tiny CLIP puts every
    # image at p = 0.99995 of one class, where no export error could show.
    return TINY_CLIP_NAME, f"hf:{bert}"


def _chinese_clip(root: Path, mp: pytest.MonkeyPatch, bert: Path) -> tuple[str, str]:
    return f"cn-clip:{make_tiny_chinese_clip(root / 'cn_clip')}", f"hf:{bert}"  # a new projection on the tower


def _siglip(root: Path, mp: pytest.MonkeyPatch, bert: Path) -> tuple[str, str]:
    return f"siglip:{make_tiny_siglip(root / 'siglip')}", f"hf:{bert}"  # the MAP head, then a new projection


FAMILIES = {
    "ResNet": _plain("resnet18"),
    "EfficientNet": _plain("efficientnet-b0"),
    "ConvNeXt": _plain("timm:test_convnext"),
    "StarNet": _plain("starnet_s050"),
    "ViT": _plain("timm:vit_tiny_patch16_224"),
    "timm": _plain("timm:mobilenetv3_small_050"),
    "clip": _open_clip,
    "cn-clip": _chinese_clip,
    "siglip": _siglip,
}


@dataclass
class ExportedRun:
    data: Path
    run: Path
    bundles: dict[str, Path]  # "ensemble" / "fold": the bundle folder
    expected: dict[str, np.ndarray]  # predict.py's probabilities, rows in predict.py's order
    names: list[str]  # the images as predict.py's CSV names them
    class_names: list[str]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               tiny_text_encoder: Path) -> ExportedRun:
    root = tmp_path_factory.mktemp(f"export_{request.param}")
    data = make_image_tree(root / "data", CLASSES, size=32)
    with pytest.MonkeyPatch.context() as mp:
        image, text = FAMILIES[request.param](root, mp, tiny_text_encoder)
        run = root / "run"
        assert train_clip.main([
            "--data-dir", str(data), "--image-encoder", image, "--text-encoder", text, "--img-size", "32",
            "--epochs", "1", "--batch-size", "4", "--learning-rate", "5e-3", "--warmup-epochs", "0",
            "--select-on", "last", "--augmentation", "none", "--num-workers", "0", "--use-cv", "--n-splits", "2",
            "--output-dir", str(run), "--log-file", str(root / "train.log")]) == 0
        bundles, expected = {}, {}
        for which, flags in {"ensemble": [], "fold": ["--fold", "1"]}.items():
            bundles[which] = root / f"bundle_{which}"
            assert export_cli.main([str(run), "--output", str(bundles[which]), *flags]) == 0
            assert predict.main(["--run-dir", str(run), "--images", str(data), "--output",
                                 str(root / f"{which}.csv"), "--cpu", *flags]) == 0
            header, rows = read_prediction_csv(root / f"{which}.csv")
            class_names = [column.removeprefix("prob_") for column in header[2:]]
            expected[which] = csv_probabilities(rows, class_names)
        yield ExportedRun(data, run, bundles, expected, [row["path"] for row in rows], class_names)


def model_inputs(run: ExportedRun) -> torch.Tensor:
    """The images predict.py classified, preprocessed as it does (the trainer's validation input)."""
    to_input = ToModelInput()
    return torch.stack([to_input(decode_image(run.data / name, 32)) for name in run.names])


@pytest.mark.parametrize("which", ["ensemble", "fold"])
def test_onnx_and_torchscript_give_predict_py_probabilities(family_run: ExportedRun, which: str) -> None:
    inputs = model_inputs(family_run)
    bundle = family_run.bundles[which]
    session = onnxruntime.InferenceSession(str(bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    # Batches of other sizes than the one exported with: the batch dimension is dynamic.
    onnx_probs = np.concatenate([session.run(None, {"image": inputs[i:i + 5].numpy()})[0]
                                 for i in range(0, len(inputs), 5)])
    with torch.no_grad():
        ts_probs = torch.jit.load(str(bundle / "models" / "model.ts"))(inputs).numpy()
    expected = family_run.expected[which]
    # PROBABILITY_TOLERANCE (tests/equivalence.py: CSV rounding + float32 ulps of the cosine times the
    # logit scale, 8.6e-5) is within the 1e-4 the export promises.
    assert PROBABILITY_TOLERANCE < 1e-4
    for probs in (onnx_probs, ts_probs):
        np.testing.assert_allclose(probs, expected, rtol=0, atol=PROBABILITY_TOLERANCE)
        assert (probs.argmax(axis=1) == expected.argmax(axis=1)).all()
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert [f["fold"] for f in metadata["folds"]] == ([1, 2] if which == "ensemble" else [1])


def test_the_ensemble_is_not_one_fold(family_run: ExportedRun) -> None:
    """What the parity guards: a bundle of the wrong folds would be off by far more than the tolerance."""
    difference = np.abs(family_run.expected["ensemble"] - family_run.expected["fold"]).max()
    assert difference > 10 * PROBABILITY_TOLERANCE


def test_the_torch_free_runner_writes_predict_py_csv(family_run: ExportedRun, tmp_path: Path) -> None:
    output = tmp_path / "runner.csv"
    assert runner.main([str(family_run.bundles["ensemble"]), "--images", str(family_run.data),
                        "--output", str(output)]) == 0
    header, rows = read_prediction_csv(output)
    assert header == ["path", "predicted_class"] + [f"prob_{name}" for name in family_run.class_names]
    assert [row["path"] for row in rows] == family_run.names
    probs = csv_probabilities(rows, family_run.class_names)
    np.testing.assert_allclose(probs, family_run.expected["ensemble"], rtol=0, atol=PROBABILITY_TOLERANCE)
    expected_classes = [family_run.class_names[k] for k in family_run.expected["ensemble"].argmax(axis=1)]
    assert [row["predicted_class"] for row in rows] == expected_classes


@pytest.mark.parametrize("family_run", ["StarNet"], indirect=True)
def test_an_unfinished_run_is_refused_as_predict_py_refuses_it(family_run: ExportedRun, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    run = shutil.copytree(family_run.run, tmp_path / "run")
    (run / "fold_2" / "result.json").unlink()
    output = tmp_path / "bundle"
    assert export_cli.main([str(run), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: RUN_DIR {run} is not a finished run (fold(s) 2 have no result.json): its checkpoints "
                   "are not the final models; finish it with train_clip.py --resume"]
    assert not output.exists()


@pytest.mark.parametrize("family_run", ["StarNet"], indirect=True)
def test_an_existing_bundle_is_replaced_only_with_overwrite(family_run: ExportedRun, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    bundle = shutil.copytree(family_run.bundles["fold"], tmp_path / "bundle")
    before = (bundle / "models" / "model.onnx").read_bytes()
    assert export_cli.main([str(family_run.run), "--output", str(bundle), "--fold", "2"]) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (bundle / "models" / "model.onnx").read_bytes() == before
    assert export_cli.main([str(family_run.run), "--output", str(bundle), "--fold", "2", "--overwrite",
                            "--format", "onnx"]) == 0
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert [f["fold"] for f in metadata["folds"]] == [2] and metadata["formats"] == ["onnx"]
    assert not (bundle / "models" / "model.ts").exists()  # fold 1's TorchScript went with its bundle
