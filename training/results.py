"""A finished run's results: ``cv_summary.json`` and ``oof_predictions.csv`` from the folds' results,
the fold ensemble on the held-out test set (``test_metrics.json``, ``test_predictions.csv``), and
the pictures and report.md drawn from them."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from torch.utils.data import DataLoader

from data.images import CachedImageDataset
from data.transforms import ToModelInput
from reporting.finetuning import finetuning_label
from reporting.calibration import apply_temperature
from reporting.methods import run_environment
from reporting.metrics import classification_metrics, expected_calibration_error, mean_and_std, scalar_metrics
from reporting.patients import patient_metrics
from reporting.report import report_from_run_dir
from reporting.run_statistics import held_out_statistics, pooled_statistics
from reporting.run_summary import SUMMARY_VERSION, RunSummary
from reporting.summary import format_summary_table
from training.checkpoint_format import SharedFiles
from training.checkpoints import load_best_model_state
from training.config import TrainConfig
from training.engine import evaluate
from training.fold import FoldResult
from training.gallery import write_gallery
from training.run import Run
from utils.io import write_csv, write_json

log = logging.getLogger("train_clip")
# What cv_summary.json repeats of test_metrics.json, as test_<key>.
TEST_SUMMARY_KEYS = ("ci", "per_class_ci", "operating_point")


def write_summary(run: Run, results: Sequence[FoldResult]) -> RunSummary:
    """cv_summary.json (and the held-out test set's files): written last, it marks the run finished."""
    document = summarise(run, results)
    if run.test_idx:
        test = evaluate_test_ensemble(run, results, document)
        document["test"] = test["metrics"]
        document.update({f"test_{key}": test[key] for key in TEST_SUMMARY_KEYS if key in test})
    run.record_time()
    document["wall_time_s"] = round(run.run_dir.wall_time_s(), 1)
    # Through the schema, so that what is written is what every reader accepts.
    summary = RunSummary.from_document(document, str(run.run_dir.summary))
    write_json(run.run_dir.summary, summary.to_document())
    log.info("Cross-validation summary (%s):\n%s", run.run_dir.summary, format_summary_table(summary))
    return summary


def write_reports(run: Run) -> None:
    """Gallery, plots and report.md; a failure here is reported but does not undo the finished results."""
    output_dir = run.run_dir.path
    try:
        write_gallery(run.run_dir, run.device, run.cfg.explain_method)
    except Exception as exc:  # noqa: BLE001 - the pictures are an extra: no failure of theirs may fail a run
        log.warning("Could not draw the saliency gallery of report.md (results are complete; retry with "
                    "'python -m training.gallery %s'): %s: %s", output_dir, type(exc).__name__, exc)
    try:
        log.info("Report: %s", ", ".join(map(str, report_from_run_dir(output_dir))))
    except (ValueError, OSError, RuntimeError) as exc:
        log.warning("Could not write the plots and report.md (results are complete; retry with "
                    "'python -m reporting.report %s'): %s", output_dir, exc)


def summarise(run: Run, results: Sequence[FoldResult]) -> dict[str, Any]:
    """Per-fold, mean ± std and pooled out-of-fold metrics; writes oof_predictions.csv."""
    names = run.images.class_names
    oof_idx = np.concatenate([r.val_idx for r in results])
    oof_probs = np.concatenate([r.val_probs for r in results])
    fold_of = np.concatenate([[r.number] * len(r.val_idx) for r in results])
    order = np.argsort(oof_idx)
    write_csv(run.run_dir.oof_predictions,
              ["path", "fold", "true_class", "predicted_class"] + [f"prob_{n}" for n in names],
              [[run.display_path(oof_idx[j]), int(fold_of[j]),
                names[run.labels[oof_idx[j]]], names[int(oof_probs[j].argmax())]]
               + [f"{p:.6f}" for p in oof_probs[j]] for j in order])
    mean, std = mean_and_std([scalar_metrics(r.metrics) for r in results])
    oof_labels = np.asarray(run.labels)[oof_idx]
    cfg = run.cfg
    inner_idx = [i for r in results for i in r.inner_idx]
    # Under inner selection the two-class threshold is chosen on the images that chose the epochs.
    chooser = ((np.asarray(run.labels)[inner_idx], np.concatenate([r.inner_probs for r in results]))
               if inner_idx else None)
    summary = {
        "version": SUMMARY_VERSION,
        "mode": "cv" if cfg.use_cv else "holdout",
        "n_splits": len(results),
        "monitor": cfg.monitor,
        # What chose each fold's model; the leaderboard and the report read it.
        "selection": {"on": cfg.select_on,
                      "inner_val_fraction": cfg.inner_val_fraction if cfg.select_on == "inner" else None,
                      "optimistic": cfg.select_on == "fold"},
        "image_encoder": run.cfg.image_encoder,
        "text_encoder": run.cfg.text_encoder,
        "fine_tuning": finetuning_label(cfg.to_dict()),  # the leaderboard's recipe column
        "class_names": names,
        "folds": [{"fold": r.number, "best_epoch": r.best_epoch, "metrics": r.metrics} for r in results],
        "mean": mean,
        "std": std,
        "oof": classification_metrics(oof_labels, oof_probs),
        # Patients, when folds are grouped, are resampled whole: their images are not independent.
        **pooled_statistics(oof_labels, oof_probs, names, cfg.bootstrap_resamples, cfg.seed,
                            run.images.groups_of(oof_idx), chooser),
        "environment": run_environment(run.device, run.amp_dtype),  # for the methods paragraph
    }
    if cfg.calibrate != "none":
        summary["calibration"] = calibration_summary(cfg, oof_labels, results)
    if run.images.groups is not None:
        summary["n_groups"] = len(set(run.images.groups))
        summary["oof_patient"] = patient_metrics([run.labels[i] for i in oof_idx], oof_probs,
                                                 run.images.groups_of(oof_idx))
        log.info("Per patient (pooled out-of-fold, %d patients): accuracy %.4f, balanced accuracy %.4f",
                 summary["oof_patient"]["n_groups"], summary["oof_patient"]["accuracy"],
                 summary["oof_patient"]["balanced_accuracy"])
    untrained = [r.number for r in results if r.best_epoch == 0]
    if untrained:
        log.warning("Fold(s) %s: the best epoch is 0, the untrained model; their numbers are the zero-shot "
                    "model's, not a trained one's", ", ".join(map(str, untrained)))
    return summary


def calibration_summary(cfg: TrainConfig, oof_labels: np.ndarray, results: Sequence[FoldResult]) -> dict[str, Any]:
    """The fitted temperatures and the pooled out-of-fold ECE before and after them."""
    before = np.concatenate([r.uncalibrated_val_probs for r in results])
    after = np.concatenate([r.val_probs for r in results])
    return {"method": cfg.calibrate,
            "fitted_on": "inner validation split" if cfg.select_on == "inner" else "the scored validation images",
            "temperatures": [r.temperature for r in results],
            "oof_ece_before": expected_calibration_error(oof_labels, before),
            "oof_ece_after": expected_calibration_error(oof_labels, after)}


def evaluate_test_ensemble(run: Run, results: Sequence[FoldResult], pooled: dict[str, Any]) -> dict[str, Any]:
    """Mean probabilities of the chosen model of every fold, each calibrated with its temperature, on the
    held-out test set (test_metrics.json).

    ``pooled`` is the summary so far: its out-of-fold operating point is applied to the test set.
    """
    cfg = run.cfg
    loader = DataLoader(CachedImageDataset(run.cache, run.test_idx, run.labels, None, ToModelInput()),
                        batch_size=cfg.batch_size * 2, num_workers=cfg.num_workers)
    per_fold = []
    files = SharedFiles()  # the run's frozen_towers.pth, read once for every fold
    for result in results:
        run.model.load_state_dict(load_best_model_state(run.run_dir, result.number, files))
        run.model.reset_text_cache()
        probs, labels, indices, _ = evaluate(run.model, loader, run.device, run.amp_dtype)
        per_fold.append(apply_temperature(probs, result.temperature))
    probs = np.mean(per_fold, axis=0)
    names = run.images.class_names
    write_csv(run.run_dir.test_predictions, ["path", "true_class", "predicted_class"] + [f"prob_{n}" for n in names],
              [[run.display_path(i), names[run.labels[i]], names[int(p.argmax())]] + [f"{x:.6f}" for x in p]
               for i, p in zip(indices, probs)])
    metrics = classification_metrics(labels, probs)
    document = {"n_images": len(run.test_idx), "ensemble_of_folds": [r.number for r in results],
                "class_names": names, "metrics": metrics,
                **held_out_statistics(labels, probs, cfg.bootstrap_resamples, cfg.seed, pooled,
                                      run.images.groups_of(indices))}
    write_json(run.run_dir.test_metrics, document)
    log.info("Held-out test set (%d images, ensemble of %d fold models): accuracy %.4f, balanced accuracy "
             "%.4f, macro-F1 %.4f", len(run.test_idx), len(results), metrics["accuracy"],
             metrics["balanced_accuracy"], metrics["macro_f1"])
    return document
