"""Plots are valid PNG files drawn without pyplot state or warning spam; report.md shows the numbers."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reporting import plots
from reporting.metrics import classification_metrics, mean_and_std, scalar_metrics
from reporting.report import load_histories, write_plots, write_report
from reporting.report import main as report_main
from reporting.run_statistics import held_out_statistics, interval_keys, pooled_statistics
from reporting.summary import format_summary_table
from tests.helpers import INNER_SELECTION, run_summary
from utils.io import write_csv, write_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = ["cat_a", "cat_b", "股骨柄A"]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def markdown_table_after(text: str, heading: str) -> dict[str, list[str]]:
    """The first Markdown table below ``heading``: first cell → the other cells, stripped."""
    lines = text.splitlines()[text.splitlines().index(heading) + 1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start + 2:]:  # below the header and its rule
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return {cells[0]: cells[1:] for cells in table}


def fake_predictions(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASS_NAMES), n)
    probs = rng.dirichlet(np.ones(len(CLASS_NAMES)), n)
    probs[np.arange(n), y] += 0.6  # mostly right, sometimes wrong
    return y, probs / probs.sum(axis=1, keepdims=True)


def fake_histories() -> dict[int, list[dict]]:
    # Fold 1 has a zero-shot epoch 0 without train_loss; fold 2 has a NaN metric.
    return {
        1: [{"epoch": 0, "val_loss": 1.2, "balanced_accuracy": 0.34}]
           + [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-4, "seconds": 1.0, "val_loss": 1.1 / e,
               "balanced_accuracy": 1 - 0.5 / e} for e in (1, 2, 3)],
        2: [{"epoch": e, "train_loss": 1.2 / e, "val_loss": 1.3 / e,
             "balanced_accuracy": float("nan") if e == 2 else 1 - 0.6 / e} for e in (1, 2, 3)],
    }


def fake_summary(y: np.ndarray, probs: np.ndarray, test: bool = False) -> dict:
    halves = [np.arange(0, len(y), 2), np.arange(1, len(y), 2)]
    fold_metrics = [classification_metrics(y[idx], probs[idx]) for idx in halves]
    mean, std = mean_and_std([scalar_metrics(m) for m in fold_metrics])
    summary = {
        "mode": "cv", "n_splits": 2, "monitor": "balanced_accuracy", "selection": INNER_SELECTION,
        "image_encoder": "resnet18",
        "text_encoder": "hf:tiny", "class_names": CLASS_NAMES,
        "folds": [{"fold": k + 1, "best_epoch": 3, "metrics": m} for k, m in enumerate(fold_metrics)],
        "mean": mean, "std": std, "oof": classification_metrics(y, probs), "wall_time_s": 12.3,
    }
    if test:
        y_test, p_test = fake_predictions(30, seed=1)
        summary["test"] = classification_metrics(y_test, p_test)
    return summary


def test_each_plot_is_a_valid_png_without_warnings(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    matrix = classification_metrics(y, probs)["confusion_matrix"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missing-glyph or font warning fails here
        paths = [plots.plot_learning_curves(fake_histories(), "balanced_accuracy", tmp_path / "lc.png"),
                 plots.plot_confusion_matrix(matrix, CLASS_NAMES, tmp_path / "cm.png"),
                 plots.plot_roc_curves(y, probs, CLASS_NAMES, tmp_path / "sub" / "roc.png")]
    for path in paths:
        assert_png(path)
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["cm.png", "lc.png", "roc.png"]


def test_roc_plot_survives_a_class_missing_from_the_labels(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    y[y == 2] = 0  # class 2 never occurs: its one-vs-rest curve is undefined
    assert_png(plots.plot_roc_curves(y, probs, CLASS_NAMES, tmp_path / "roc.png"))


def test_plots_reject_shapes_that_do_not_match_the_class_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 class names"):
        plots.plot_confusion_matrix([[1, 2], [3, 4]], CLASS_NAMES, tmp_path / "cm.png")
    with pytest.raises(ValueError, match="probabilities"):
        plots.plot_roc_curves([0, 1], np.full((2, 2), 0.5), CLASS_NAMES, tmp_path / "roc.png")
    assert not list(tmp_path.iterdir())


def test_row_normalise_keeps_empty_rows_at_zero() -> None:
    fractions = plots.row_normalise(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(fractions, [[0.75, 0.25], [0.0, 0.0]])


def test_report_shows_numbers_tables_and_pictures(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs, test=True)
    made = write_plots(tmp_path, run_summary(**summary), fake_histories(), y, probs)
    assert set(made) == {"learning_curves", "confusion_matrix", "roc_curves", "reliability_diagram",
                         "test_confusion_matrix"}
    for relative in made.values():
        assert not Path(relative).is_absolute()
        assert_png(tmp_path / relative)
    report = write_report(tmp_path, run_summary(**summary), made).read_text(encoding="utf-8")

    for relative in made.values():
        assert f"]({relative})" in report
    rows = markdown_table_after(report, "## Summary")
    assert rows["balanced accuracy (monitored)"][0] == (f"{summary['mean']['balanced_accuracy']:.4f} ± "
                                                        f"{summary['std']['balanced_accuracy']:.4f}")
    expected = [summary["folds"][0]["metrics"]["macro_f1"], summary["folds"][1]["metrics"]["macro_f1"],
                summary["oof"]["macro_f1"], summary["test"]["macro_f1"]]
    assert rows["macro F1"][1:] == [f"{v:.4f}" for v in expected]
    per_class = markdown_table_after(report, "## Per class (pooled out-of-fold)")
    for name, stats in zip(CLASS_NAMES, summary["oof"]["per_class"]):
        assert per_class[name] == [f"{stats['precision']:.4f}", f"{stats['recall']:.4f}",
                                   f"{stats['specificity']:.4f}", f"{stats['f1']:.4f}", str(stats["support"])]
    assert "Per class (held-out test set" in report and "unbiased" in report


def test_report_without_test_set_or_histories(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs)
    summary["oof"]["roc_auc"] = float("nan")
    made = write_plots(tmp_path, run_summary(**summary), {}, y, probs)
    assert set(made) == {"confusion_matrix", "roc_curves", "reliability_diagram"}
    report = write_report(tmp_path, run_summary(**summary), made).read_text(encoding="utf-8")
    assert "held-out test" not in report and "--test-fraction" in report
    assert markdown_table_after(report, "## Summary")["macro ROC-AUC (one-vs-rest)"][-1] == "n/a"
    assert "untrained" not in report


def test_report_warns_about_a_fold_whose_best_model_is_the_untrained_one(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs)
    summary["folds"][1]["best_epoch"] = 0
    report = write_report(tmp_path, run_summary(**summary), {}).read_text(encoding="utf-8")
    assert "Fold(s) 2: the best epoch is 0, the untrained model" in report


def test_report_cli_rebuilds_from_run_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs)
    write_json(tmp_path / "cv_summary.json", summary)
    write_csv(tmp_path / "oof_predictions.csv", ["path", "fold", "true_class", "predicted_class"]
              + [f"prob_{n}" for n in CLASS_NAMES],
              [[f"{i}.png", 1, CLASS_NAMES[t], CLASS_NAMES[p.argmax()], *p] for i, (t, p) in enumerate(zip(y, probs))])
    for fold, history in fake_histories().items():
        write_json(tmp_path / f"fold_{fold}" / "history.json", history)
    assert list(load_histories(tmp_path)) == [1, 2]

    assert report_main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "plots/learning_curves.png" in report and "plots/roc_curves.png" in report
    assert_png(tmp_path / "plots" / "roc_curves.png")

    assert report_main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "cv_summary.json" in err[-1]


def test_report_and_console_show_the_intervals_of_pooled_and_test_metrics(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs, test=True)
    summary.update(pooled_statistics(y, probs, CLASS_NAMES, n_resamples=200, seed=3))
    y_test, p_test = fake_predictions(30, seed=1)  # the test set of fake_summary
    summary.update(interval_keys("test_", y_test, p_test, n_resamples=200, seed=3))
    report = write_report(tmp_path, run_summary(**summary), {}).read_text(encoding="utf-8")
    low, high = summary["oof_ci"]["macro_f1"]
    test_low, test_high = summary["test_ci"]["macro_f1"]
    row = markdown_table_after(report, "## Summary")["macro F1"]
    assert row[-4:] == [f"{summary['oof']['macro_f1']:.4f}", f"[{low:.4f}, {high:.4f}]",
                        f"{summary['test']['macro_f1']:.4f}", f"[{test_low:.4f}, {test_high:.4f}]"]
    assert "BCa bootstrap, 200 resamples of images, seed 3" in report
    sensitivity = summary["oof_per_class_ci"][2]["sensitivity"]
    cells = markdown_table_after(report, "## Per class (pooled out-of-fold)")[CLASS_NAMES[2]]
    assert cells[2] == f"[{sensitivity[0]:.4f}, {sensitivity[1]:.4f}]"
    console = format_summary_table(run_summary(**summary))
    assert f"[{low:.4f}, {high:.4f}]" in console and "95% CI" in console.splitlines()[0]
    assert "operating point" not in console.lower()  # three classes: no threshold to choose


def test_two_classes_report_the_youden_operating_point_and_the_test_set_at_it(tmp_path: Path) -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.column_stack([1 - np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]),
                             [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]])
    pooled = pooled_statistics(y, probs, ["absent", "present"], n_resamples=0, seed=0)
    assert "oof_ci" not in pooled  # 0 resamples: no intervals
    point = pooled["operating_point"]
    # Thresholds 0.7 (sens 3/4, spec 4/4) and 0.4 (sens 4/4, spec 3/4) tie at J = 0.75; roc_curve
    # meets 0.7 first.
    assert point["threshold"] == pytest.approx(0.7) and point["positive_class"] == "present"
    assert (point["sensitivity"], point["specificity"], point["youden_j"]) == pytest.approx((0.75, 1.0, 0.75))
    test = held_out_statistics(np.array([0, 1, 1]), np.array([[0.2, 0.8], [0.5, 0.5], [0.1, 0.9]]),
                               n_resamples=0, seed=0, pooled=pooled)
    assert test["operating_point"] == {"threshold": point["threshold"], "sensitivity": 0.5, "specificity": 0.0}
    summary = fake_summary(*fake_predictions()) | pooled | {"test_operating_point": test["operating_point"]}
    report = write_report(tmp_path, run_summary(**summary), {}).read_text(encoding="utf-8")
    assert "Operating point for 'present'" in report and "probability >= 0.7000" in report
    assert "on the held-out test set at that threshold: sensitivity 0.5000, specificity 0.0000" in report


def test_reliability_diagram_shows_the_bins_the_ece_averages(tmp_path: Path) -> None:
    y, probs = fake_predictions(200)
    bins = plots.reliability_bins(y, probs)
    assert bins.counts.sum() == len(y) and (bins.counts > 0).all()
    gaps = np.abs(bins.accuracy - bins.confidence) * bins.counts / len(y)
    assert gaps.sum() == pytest.approx(classification_metrics(y, probs)["ece"])
    assert ((bins.left <= bins.confidence) & (bins.confidence <= bins.left + 1 / 15)).all()
    assert_png(plots.plot_reliability_diagram(y, probs, tmp_path / "reliability.png"))


def test_the_report_and_console_say_what_chose_each_fold_model(tmp_path: Path) -> None:
    y, probs = fake_predictions()
    summary = fake_summary(y, probs) | {"wall_time_s": 1.0}
    texts = {}
    for on in ("inner", "last", "fold"):
        summary["selection"] = {"on": on, "inner_val_fraction": 0.15 if on == "inner" else None,
                                "optimistic": on == "fold"}
        read = run_summary(**summary)
        texts[on] = (write_report(tmp_path, read, {}).read_text(encoding="utf-8"), format_summary_table(read))
    label = "selected on the scored fold — optimistic"
    assert "inner validation split of its training images (at least 15%)" in texts["inner"][0]
    assert "last epoch" in texts["last"][0] and "nothing chosen" in texts["last"][1]
    for on in ("inner", "last"):
        assert "optimistic" not in texts[on][0] and label not in texts[on][1].lower()
    report, console = texts["fold"]
    assert f"*All numbers below: {label}.*" in report and "lean optimistic" in report
    assert label in console.lower()


def test_under_inner_selection_the_threshold_is_chosen_on_the_inner_predictions_and_read_on_the_pooled() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    probs = np.column_stack([1 - scores, scores])
    # The inner predictions separate perfectly at 0.35; the pooled ones are read there, not at their own best.
    inner_y = np.array([0, 0, 1, 1])
    inner_scores = np.array([0.2, 0.3, 0.35, 0.5])
    pooled = pooled_statistics(y, probs, ["absent", "present"], n_resamples=0, seed=0,
                               chooser=(inner_y, np.column_stack([1 - inner_scores, inner_scores])))
    point = pooled["operating_point"]
    assert point["threshold"] == pytest.approx(0.35) and "inner validation" in point["rule"]
    assert (point["inner_sensitivity"], point["inner_specificity"]) == (1.0, 1.0)
    # At 0.35 the pooled predictions call 0.4, 0.6, 0.7, 0.8, 0.9 positive: 4/4 sensitivity, 3/4 specificity.
    assert (point["sensitivity"], point["specificity"]) == (1.0, 0.75)
