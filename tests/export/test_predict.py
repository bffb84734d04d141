"""``python -m export.predict``: the torch-free runner gives the exported graph's probabilities on PNG and
DICOM files fed through the trainer's own preprocessing, and refuses an altered model."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.dicom import DicomOptions
from data.images import decode_image
from data.transforms import ToModelInput
from export import predict as runner
from export.bundle import ExportedRun, write_bundle
from export.formats import export_onnx
from export.graph import ExportedClassifier
from tests.equivalence import PROBABILITY_TOLERANCE
from tests.export.fold_models import CLASS_NAMES, IMG, run_models, tiny_fold_models
from tests.helpers import run_summary, write_dicom


ROOT = Path(__file__).resolve().parents[2]
# Makes torch (and the libraries that need it) unimportable in the process it starts in.
NO_TORCH = "import sys\nfor name in ('torch', 'torchvision', 'timm', 'open_clip', 'transformers'):\n" \
           "    sys.modules[name] = None\n"
WINDOW = "1000,1000"


@pytest.fixture(scope="module")
def bundle(tiny_text_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportedClassifier]:
    models = tiny_fold_models(tiny_text_encoder, temperatures=(1.0, 0.7))
    graph = ExportedClassifier(models)
    folder = tmp_path_factory.mktemp("bundle") / "bundle"
    run = ExportedRun(Path("/runs/x"), run_models(models, tiny_text_encoder, dicom_window=WINDOW),
                      run_summary(class_names=CLASS_NAMES))
    write_bundle(folder, run, {"onnx": partial(export_onnx, graph, img_size=IMG, encoder="starnet_s050")})
    return folder, graph


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-bit DICOM (windowed by the run's --dicom-window), a wide grayscale PNG and a colour JPEG."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    write_dicom(folder / "scan.dcm", rng.integers(0, 4096, size=(40, 30)).astype(np.uint16), bits_stored=12)
    Image.fromarray(rng.integers(0, 255, size=(20, 50)).astype(np.uint8), mode="L").save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, size=(36, 36, 3)).astype(np.uint8), mode="RGB").save(folder / "c.jpg")
    return folder


def read_probs(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    return list(reader.fieldnames or []), {r["path"]: np.array([float(r[f"prob_{c}"]) for c in CLASS_NAMES])
                                           for r in rows}


def trainer_probs(graph: ExportedClassifier, files: list[Path]) -> np.ndarray:
    """The graph on the images as the trainer preprocesses them (data.images + data.transforms)."""
    to_input = ToModelInput()
    inputs = torch.stack([to_input(decode_image(f, IMG, DicomOptions(WINDOW))) for f in files])
    with torch.no_grad():
        return graph(inputs).numpy()


def test_without_torch_it_classifies_dicom_and_png_as_the_trainer_would(bundle, images: Path, tmp_path: Path) -> None:
    folder, graph = bundle
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_TORCH, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "ModuleNotFoundError" in check.stderr  # the shim works
    output = tmp_path / "out.csv"
    files = [images / "scan.dcm", images / "wide.png"]
    result = subprocess.run([sys.executable, "-m", "export.predict", str(folder), "--images", *map(str, files),
                             "--output", str(output)], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    header, probs = read_probs(output)
    assert header == ["path", "predicted_class"] + [f"prob_{c}" for c in CLASS_NAMES]
    expected = trainer_probs(graph, files)
    np.testing.assert_allclose(np.stack([probs[str(f)] for f in files]), expected, rtol=0, atol=PROBABILITY_TOLERANCE)
    # The DICOM went through the run's window: the full range would have given another input.
    assert not torch.equal(decode_image(files[0], IMG, DicomOptions(WINDOW)), decode_image(files[0], IMG))


def test_a_folder_and_a_manifest_name_their_images_as_predict_py_does(bundle, images: Path, tmp_path: Path) -> None:
    folder, graph = bundle
    manifest = images / "list.csv"
    manifest.write_text("path,label\nc.jpg,x\nscan.dcm,y\n", encoding="utf-8")
    for given, names in [(images, ["c.jpg", "scan.dcm", "wide.png"]), (manifest, ["c.jpg", "scan.dcm"])]:
        output = tmp_path / "out.csv"
        assert runner.main([str(folder), "--images", str(given), "--output", str(output)]) == 0
        _, probs = read_probs(output)
        assert list(probs) == names
        np.testing.assert_allclose(np.stack(list(probs.values())), trainer_probs(graph, [images / n for n in names]),
                                   rtol=0, atol=PROBABILITY_TOLERANCE)
    manifest.unlink()


def test_an_altered_model_is_refused_before_anything_is_written(bundle, images: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    folder, _ = bundle
    copy = tmp_path / "copy"
    for path in folder.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(folder)).write_bytes(path.read_bytes())
    model = copy / "models" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    output = tmp_path / "out.csv"
    assert runner.main([str(copy), "--images", str(images), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{model} is not the exported model" in err[0] and "replaced or truncated" in err[0]
    assert not output.exists()


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "is not an exported bundle: it has no configs/metadata.json"),
    (["{bundle}", "--images", "{missing}"], "--images {missing} does not exist"),
    (["{bundle}", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_input_gives_one_error_line(bundle, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        args: list[str], message: str) -> None:
    places = {"missing": str(tmp_path / "missing"), "bundle": str(bundle[0])}
    argv = [a.format(**places) for a in args]
    if "--images" not in argv:
        argv += ["--images", str(images)]
    assert runner.main(argv + ["--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message.format(**places) in err[0]
