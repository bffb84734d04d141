"""The bundle: what its metadata records, and that writing one loses nothing already there."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from export.bundle import ExportedRun, check_output, write_bundle
from export.formats import export_onnx
from export.graph import ExportedClassifier
from export.layout import BundleError, read_metadata, verified_model
from tests.export.fold_models import CLASS_NAMES, CLASS_TEXTS, IMG, run_models, tiny_fold_models
from tests.helpers import run_summary
from utils.io import file_sha256


SUMMARY = run_summary(class_names=CLASS_NAMES, oof={"accuracy": 0.75, "balanced_accuracy": 0.7},
                      oof_ci={"accuracy": [0.6, 0.9], "balanced_accuracy": [0.5, 0.85]},
                      ci_settings={"method": "BCa", "n_resamples": 1000, "resampled_unit": "image", "seed": 42},
                      operating_point={"positive_class": "cat_a", "rule": "Youden's J", "threshold": 0.42,
                                       "sensitivity": 0.8, "specificity": 0.7},
                      environment={"versions": {"torch": "2.14.1"}, "train_clip_commit": "abcdef123456"})


@pytest.fixture(scope="module")
def exported(tiny_text_encoder: Path) -> ExportedRun:
    models = tiny_fold_models(tiny_text_encoder, temperatures=(1.0, 1.5))
    return ExportedRun(Path("/runs/study_1"), run_models(models, tiny_text_encoder, dicom_window="300,1500"), SUMMARY)


def onnx_writer(run: ExportedRun) -> dict:
    return {"onnx": partial(export_onnx, ExportedClassifier(run.fold_models), img_size=IMG, encoder="starnet_s050")}


def test_the_metadata_says_how_to_feed_the_model_and_how_good_it_is(exported: ExportedRun, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, exported, onnx_writer(exported))
    meta = read_metadata(bundle)
    assert meta["classes"] == CLASS_NAMES
    assert meta["class_texts"] == dict(zip(CLASS_NAMES, CLASS_TEXTS))
    assert meta["network_data_format"]["inputs"]["image"]["shape"] == ["N", 3, IMG, IMG]
    assert meta["preprocessing"]["img_size"] == IMG
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and meta["preprocessing"]["std"][0] == 0.229
    assert meta["preprocessing"]["dicom"]["window"] == "300,1500"  # the run's --dicom-window
    assert [(f["fold"], f["temperature"]) for f in meta["folds"]] == [(1, 1.0), (2, 1.5)]
    assert meta["metrics"]["oof_ci"]["accuracy"] == [0.6, 0.9]
    assert meta["operating_point"]["threshold"] == 0.42
    assert meta["training"] == {"commit": "abcdef123456", "versions": {"torch": "2.14.1"}}
    assert meta["export"]["onnx_opset"] == 18 and meta["export"]["onnxruntime"] == "1.32.0"
    assert meta["files"] == {"models/model.onnx": file_sha256(bundle / "models" / "model.onnx")}
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    assert "accuracy: 0.750 (95% CI 0.600-0.900)" in readme and "probability >= 0.4200" in readme
    assert not list(tmp_path.glob(".*.tmp"))  # the staging folder is gone


def test_a_model_file_replaced_or_truncated_is_refused(exported: ExportedRun, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    meta = write_bundle(bundle, exported, onnx_writer(exported))
    model = bundle / "models" / "model.onnx"
    assert verified_model(bundle, meta, "onnx") == model
    content = model.read_bytes()
    for altered in (content[: len(content) // 2], content[:-1] + bytes([content[-1] ^ 1])):
        model.write_bytes(altered)
        with pytest.raises(BundleError, match="models/model.onnx is not the exported model: its SHA-256"):
            verified_model(bundle, meta, "onnx")
    with pytest.raises(BundleError, match=r"has no models/model.ts \(exported formats: onnx\)"):
        verified_model(bundle, meta, "torchscript")


def test_an_empty_folder_is_used_and_a_full_one_needs_overwrite(exported: ExportedRun, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    check_output(bundle, overwrite=False)  # made beforehand, empty: a safe place to write
    write_bundle(bundle, exported, onnx_writer(exported))
    with pytest.raises(BundleError, match="already exists and is not empty; pass --overwrite"):
        check_output(bundle, overwrite=False)
    check_output(bundle, overwrite=True)
    (bundle / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(BundleError, match=r"holds files that are not a bundle's \(notes.txt\)"):
        check_output(bundle, overwrite=True)


def test_a_failed_export_leaves_the_bundle_there_as_it_was(exported: ExportedRun, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, exported, onnx_writer(exported))
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}

    def fails(path: Path) -> None:
        path.write_bytes(b"half a model")
        raise BundleError("the encoder's op cannot be exported")

    with pytest.raises(BundleError):
        write_bundle(bundle, exported, {"onnx": fails})
    assert {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".*.tmp"))
    assert json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))["formats"] == ["onnx"]
