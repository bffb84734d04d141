"""Where the model looks, on a tiny finished run: report.md's gallery and predict.py --explain."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import predict
import train_clip
from reporting.gallery import CORRECT, WRONG, Gallery, GalleryCase, choose_cases, gallery_section
from tests.helpers import make_image_tree
from training import results
from utils.run_dir import RunDir

CLASSES = {"cat_a": 6, "股骨柄A": 6}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path) -> tuple[Path, Path]:
    """(data dir, run dir) of a 2-fold, 1-epoch run; its report step drew the gallery."""
    root = tmp_path_factory.mktemp("explain_run")
    data = make_image_tree(root / "data", CLASSES)
    out = root / "run"
    code = train_clip.main([
        "--data-dir", str(data), "--text-encoder", f"hf:{tiny_text_encoder}", "--image-encoder", "starnet_s050",
        "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0",
        "--augmentation", "none", "--num-workers", "0", "--use-cv", "--n-splits", "2",
        "--explain-method", "gradcam++", "--output-dir", str(out), "--log-file", str(root / "train.log")])
    assert code == 0
    return data, out


def assert_png(path: Path, min_width: int = 100) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width


def oof_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with (run / "oof_predictions.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_shows_a_gallery_drawn_by_the_validating_fold(finished_run) -> None:
    _, run = finished_run
    gallery = Gallery.read(RunDir(run))
    assert gallery is not None and gallery.method == "gradcam++"
    expected = choose_cases(oof_rows(run), list(CLASSES))
    assert [(c.path, c.kind, c.fold) for c in gallery.cases] == [(c.path, c.kind, c.fold) for c in expected]
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## Where the model looks" in report
    for case in gallery.cases:
        assert_png(run / case.picture)
        assert f"](<{case.picture}>)" in report  # linked relative to the run folder
    assert "股骨柄A" in report


def test_gallery_picks_the_most_confident_right_and_wrong_per_class() -> None:
    def row(path: str, true: str, predicted: str, p_a: float, fold: int = 1) -> dict[str, str]:
        return {"path": path, "fold": str(fold), "true_class": true, "predicted_class": predicted,
                "prob_a": str(p_a), "prob_b": str(round(1 - p_a, 6))}

    rows = [row("a1", "a", "a", 0.6), row("a2", "a", "a", 0.9, fold=2), row("a3", "a", "b", 0.3),
            row("a4", "a", "b", 0.1), row("b1", "b", "b", 0.2)]
    cases = choose_cases(rows, ["a", "b"])
    assert [(c.true_class, c.kind, c.path) for c in cases] == [("a", CORRECT, "a2"), ("a", WRONG, "a4"),
                                                               ("b", CORRECT, "b1")]
    assert cases[0].fold == 2 and cases[1].probability == pytest.approx(0.9)


def test_a_gallery_failure_leaves_the_run_and_its_report(finished_run, tmp_path: Path, monkeypatch,
                                                          caplog) -> None:
    _, finished = finished_run
    run = shutil.copytree(finished, tmp_path / "run")
    (run / "report.md").unlink()

    def broken(*args, **kwargs):
        raise AttributeError("no target layer")

    monkeypatch.setattr(results, "write_gallery", broken)
    fake_run = SimpleNamespace(run_dir=RunDir(run), device=torch.device("cpu"),
                               cfg=SimpleNamespace(explain_method="gradcam"))
    results.write_reports(fake_run)
    assert "Could not draw the saliency gallery" in caplog.text and "no target layer" in caplog.text
    assert (run / "report.md").is_file()


def test_predict_explain_writes_one_picture_per_image(finished_run, tmp_path: Path, capsys) -> None:
    data, run = finished_run
    images = tmp_path / "new images"
    (images / "病例 1").mkdir(parents=True)
    shutil.copy(data / "cat_a" / "img_000.png", images / "病例 1" / "x.png")
    shutil.copy(data / "股骨柄A" / "img_000.png", images / "病例 1_x.png")  # same safe name as 病例 1/x.png
    shutil.copy(data / "cat_a" / "img_001.png", images / "y.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "heatmaps"
    assert predict.main(["--run-dir", str(run), "--images", str(images), "--output", str(tmp_path / "p.csv"),
                         "--explain", str(out)]) == 0
    pictures = sorted(p.name for p in out.iterdir())
    assert pictures == ["y.png", "病例 1_x.png", "病例 1_x_2.png"]  # unreadable one skipped, names unique
    for name in pictures:
        assert_png(out / name)
    assert "Wrote 3 heatmap picture(s)" in capsys.readouterr().out


def test_predict_explain_refuses_a_file(finished_run, tmp_path: Path, capsys) -> None:
    data, run = finished_run
    taken = tmp_path / "heatmaps.png"
    taken.write_bytes(b"")
    code = predict.main(["--run-dir", str(run), "--images", str(data), "--output", str(tmp_path / "p.csv"),
                         "--explain", str(taken)])
    assert code == 2 and "--explain" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_gallery_command_redraws_with_another_method(finished_run, tmp_path: Path) -> None:
    from training import gallery

    _, finished = finished_run
    run = shutil.copytree(finished, tmp_path / "run")
    assert gallery.main([str(run), "--explain-method", "eigencam"]) == 0
    assert Gallery.read(RunDir(run)).method == "eigencam"
    assert "(eigencam)" in (run / "report.md").read_text(encoding="utf-8")
    assert json.loads((run / "config.json").read_text())["explain_method"] == "gradcam++"  # the run is unchanged


def test_gallery_section_links_names_with_spaces_and_bars(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    case = GalleryCase("a|b", WRONG, "a|b/x 1.png", 2, "c", 0.75, picture="plots/gallery/a|b_wrong_x 1.png")
    Gallery("eigencam", [case]).write(run)
    row = gallery_section(run)[-1]
    assert row.startswith("| a\\|b | — | ![wrong](<plots/gallery/a\\|b_wrong_x 1.png>)")
    assert "fold 2: predicted c (p = 0.75)" in row


def test_rebuilding_the_report_keeps_the_gallery(finished_run, tmp_path: Path) -> None:
    from reporting.report import report_from_run_dir

    _, finished = finished_run
    run = shutil.copytree(finished, tmp_path / "run")
    (run / "report.md").unlink()
    report_from_run_dir(run)
    assert "## Where the model looks" in (run / "report.md").read_text(encoding="utf-8")
