"""predict.py on a tiny real run: it reproduces a fold's validation results and ensembles the folds."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import predict
import train_clip
from tests.conftest import ROOT
from tests.equivalence import PROBABILITY_TOLERANCE, assert_csv_probabilities_sum_to_one
from tests.helpers import csv_probabilities, make_image_tree, read_prediction_csv
from utils.checksums import save_recorded
from utils.io import load_checkpoint



@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path) -> tuple[Path, Path]:
    """(data dir, run dir) of a 2-fold, 2-epoch run on 3 classes, one with a Chinese name."""
    root = tmp_path_factory.mktemp("predict_run")
    data = make_image_tree(root / "data", {"cat_a": 8, "cat_b": 8, "股骨柄A": 8})
    out = root / "run"
    text_encoder = shutil.copytree(tiny_text_encoder, root / "text encoder 文本")
    code = train_clip.main([
        "--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "starnet_s050",
        "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-3",
        "--warmup-epochs", "0", "--augmentation", "none", "--num-workers", "0", "--use-cv", "--n-splits", "2",
        "--output-dir", str(out), "--log-file", str(root / "train.log")])
    assert code == 0
    # predict.py rebuilds the model from the checkpoint alone: the text encoder's folder (tokenizer,
    # config) is gone, as on a clinic machine that only got the run folder.
    shutil.rmtree(text_encoder)
    return data, out


def run_predict(run: Path, images: Path, output: Path, *extra: str) -> tuple[list[str], list[dict[str, str]]]:
    assert predict.main(["--run-dir", str(run), "--images", str(images), "--output", str(output), *extra]) == 0
    return read_prediction_csv(output)


def test_one_fold_reproduces_its_logged_validation_results(finished_run, tmp_path: Path) -> None:
    data, run = finished_run
    summary = json.loads((run / "cv_summary.json").read_text(encoding="utf-8"))
    val = json.loads((run / "folds.json").read_text(encoding="utf-8"))["folds"][0]["val"]
    images = tmp_path / "fold1_val"
    for relative in val:  # relative to the data dir, class folder first
        (images / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / relative, images / relative)

    _, rows = run_predict(run, images, tmp_path / "fold1.csv", "--fold", "1")
    assert sorted(row["path"] for row in rows) == sorted(val)
    accuracy = np.mean([row["predicted_class"] == row["path"].split("/")[0] for row in rows])
    assert accuracy == summary["folds"][0]["metrics"]["accuracy"]
    # Not just the accuracy: every probability equals the logged out-of-fold one.
    _, oof = read_prediction_csv(run / "oof_predictions.csv")
    oof_by_path = {row["path"]: row for row in oof if row["fold"] == "1"}
    names = summary["class_names"]
    np.testing.assert_allclose(csv_probabilities(rows, names),
                               csv_probabilities([oof_by_path[row["path"]] for row in rows], names),
                               rtol=0, atol=PROBABILITY_TOLERANCE)


def test_ensemble_is_the_mean_of_the_folds_with_one_row_per_image(finished_run, tmp_path: Path) -> None:
    data, finished = finished_run
    # Two training steps may leave both folds' best epoch at 0, the zero-shot model both folds start
    # from; give fold 2 its trained last-epoch weights so that the two fold models surely differ.
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    best = load_checkpoint(run / "fold_2" / "checkpoint_best.pth")
    best["model"] = load_checkpoint(run / "fold_2" / "checkpoint_latest.pth")["model"]
    save_recorded(run / "fold_2" / "checkpoint_best.pth", best)  # recorded, as the trainer writes it
    names = json.loads((run / "cv_summary.json").read_text(encoding="utf-8"))["class_names"]
    header, rows = run_predict(run, data, tmp_path / "all.csv")
    assert header == ["path", "predicted_class"] + [f"prob_{name}" for name in names]
    expected = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    assert [row["path"] for row in rows] == expected
    probs = csv_probabilities(rows, names)
    assert_csv_probabilities_sum_to_one(probs)
    assert [row["predicted_class"] for row in rows] == [names[k] for k in probs.argmax(axis=1)]

    per_fold = [csv_probabilities(run_predict(run, data, tmp_path / f"f{k}.csv", "--fold", str(k))[1], names)
                for k in (1, 2)]
    # The folds differ by more than rounding, so the mean means something.
    assert np.abs(per_fold[0] - per_fold[1]).max() > 10 * PROBABILITY_TOLERANCE
    np.testing.assert_allclose(probs, (per_fold[0] + per_fold[1]) / 2, rtol=0, atol=PROBABILITY_TOLERANCE)


def test_class_texts_file_swaps_in_new_classes_in_file_order(finished_run, tmp_path: Path) -> None:
    data, run = finished_run
    texts = tmp_path / "new_texts.json"
    texts.write_text(json.dumps({"zeta": "a bright bar on the right", "alpha": ["a bar on the left", "left"]}),
                     encoding="utf-8")
    header, rows = run_predict(run, data / "cat_a", tmp_path / "zs.csv", "--class-texts-file", str(texts))
    assert header == ["path", "predicted_class", "prob_zeta", "prob_alpha"]
    assert len(rows) == 8 and {row["predicted_class"] for row in rows} <= {"zeta", "alpha"}
    assert_csv_probabilities_sum_to_one(csv_probabilities(rows, ["zeta", "alpha"]))


def test_new_chinese_descriptions_into_an_english_tokenizer_are_warned_about(finished_run, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    data, run = finished_run
    texts = tmp_path / "new_texts.json"
    texts.write_text(json.dumps({"短柄": "保留股骨颈的非骨水泥型短柄", "长柄": "a long revision stem"}), encoding="utf-8")
    run_predict(run, data / "cat_a", tmp_path / "zs.csv", "--class-texts-file", str(texts))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "does not cover" in line]
    assert len(warnings) == 1 and "1 description(s) of class(es) 短柄:" in warnings[0]


def test_unreadable_images_are_skipped_and_named(finished_run, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    data, run = finished_run
    images = tmp_path / "mixed"
    shutil.copytree(data / "cat_b", images)
    (images / "broken.png").write_bytes(b"not an image")
    (images / ".hidden.png").write_bytes(b"ignored: hidden")
    _, rows = run_predict(run, images, tmp_path / "mixed.csv", "--fold", "2")
    assert len(rows) == 8 and "broken.png" not in {row["path"] for row in rows}
    captured = capsys.readouterr()
    assert "Skipping 1 unreadable image(s): broken.png" in captured.err
    assert "skipped 1 unreadable" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--run-dir", "{missing}"], "--run-dir"),
    (["--run-dir", "{run}", "--fold", "7"], "--fold 7"),
    (["--run-dir", "{data}"], "no fold_K/checkpoint_best.pth"),
    (["--run-dir", "{run}", "--class-texts-file", "{missing}"], "--class-texts-file"),
])
def test_bad_input_gives_one_error_line(finished_run, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        args: list[str], message: str) -> None:
    data, run = finished_run
    places = {"missing": str(tmp_path / "missing"), "run": str(run), "data": str(data)}
    output = tmp_path / "out.csv"
    argv = [a.format(**places) for a in args] + ["--images", str(data), "--output", str(output)]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not output.exists()


def test_script_entry_point_fails_cleanly_on_a_missing_run_dir(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run-dir", str(tmp_path / "nope"),
                             "--images", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --run-dir {tmp_path / 'nope'} does not exist or "
                                                  "is not a folder"]
