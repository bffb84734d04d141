"""``cv_summary.json``: the one schema of a run's results, written by the trainer and read by the
report, the leaderboard, the comparison, the gallery and the export (docs/design.md §6).

The document is flat JSON, as readers outside this project (a notebook, a spreadsheet) read it.
:class:`RunSummary` holds the parts every run has, checked once when it is read; the sections that
depend on the run (confidence intervals, the operating point, calibration, patients, the test set)
travel in ``sections`` under their own keys, read with :meth:`RunSummary.section`. ``version``
changes when a key changes meaning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from utils.errors import UserError
from utils.io import read_json

SUMMARY_VERSION = 1


class SummaryError(UserError, ValueError):
    """A cv_summary.json that is not one this trainer wrote (or not whole)."""


@dataclass(frozen=True)
class FoldScore:
    """One fold's chosen model: its epoch (0 is the zero-shot model) and its validation metrics."""

    fold: int
    best_epoch: int
    metrics: dict[str, Any]


SELECTION_RULES = ("inner", "last", "fold")  # the choices of --select-on (training/config.py)


@dataclass(frozen=True)
class Selection:
    """What chose each fold's model (--select-on): ``on`` the inner validation split (its
    ``inner_val_fraction``), the last epoch, or the scored fold; ``optimistic`` when the images that
    chose the model are the ones that score it."""

    on: str
    inner_val_fraction: float | None
    optimistic: bool

    def to_document(self) -> dict[str, Any]:
        return {"on": self.on, "inner_val_fraction": self.inner_val_fraction, "optimistic": self.optimistic}

    @classmethod
    def from_document(cls, data: Mapping[str, Any], source: str) -> Selection:
        on, fraction, optimistic = data.get("on"), data.get("inner_val_fraction"), data.get("optimistic")
        # Readers state the fraction of an inner split, and only of one.
        fraction_fits = isinstance(fraction, (int, float)) if on == "inner" else fraction is None
        if on not in SELECTION_RULES or not isinstance(optimistic, bool) or not fraction_fits:
            raise SummaryError(f"{source}: 'selection' is not what chose the fold models ('on': "
                               f"{', '.join(SELECTION_RULES)}; 'optimistic': true or false; 'inner_val_fraction' "
                               "a number under 'inner', else null)")
        return cls(on, fraction, optimistic)


@dataclass(frozen=True)
class RunSummary:
    mode: str  # "cv" or "holdout"
    n_splits: int
    monitor: str
    selection: Selection
    image_encoder: str
    text_encoder: str
    class_names: list[str]
    folds: list[FoldScore]
    mean: dict[str, float]
    std: dict[str, float]
    oof: dict[str, Any]  # the pooled out-of-fold metrics
    environment: dict[str, Any]
    wall_time_s: float | None = None  # set when the run is finished
    sections: dict[str, Any] = field(default_factory=dict)
    version: int = SUMMARY_VERSION

    @property
    def is_cross_validation(self) -> bool:
        return self.mode == "cv"

    def section(self, key: str) -> Any:
        """The run-dependent section ``key`` (``test``, ``oof_ci``, ``operating_point``, ...); None when the
        run has none (no test set, no resamples, more than two classes, ...)."""
        return self.sections.get(key)

    def metric_by_fold(self, metric: str) -> list[float]:
        """``metric`` at each fold's chosen epoch, in fold order (NaN where it is missing or null)."""
        def value(fold: FoldScore) -> float:
            number = fold.metrics.get(metric)
            return float(number) if isinstance(number, (int, float)) and not isinstance(number, bool) else math.nan

        return [value(f) for f in sorted(self.folds, key=lambda f: f.fold)]

    def to_document(self) -> dict[str, Any]:
        """The JSON object as written: the fixed keys, then the sections' keys."""
        document = {"version": self.version, "mode": self.mode, "n_splits": self.n_splits, "monitor": self.monitor,
                    "selection": self.selection.to_document(), "image_encoder": self.image_encoder,
                    "text_encoder": self.text_encoder, "class_names": self.class_names,
                    "folds": [{"fold": f.fold, "best_epoch": f.best_epoch, "metrics": f.metrics} for f in self.folds],
                    "mean": self.mean, "std": self.std, "oof": self.oof, "environment": self.environment}
        if self.wall_time_s is not None:
            document["wall_time_s"] = self.wall_time_s
        return {**document, **self.sections}

    @classmethod
    def from_document(cls, data: Any, source: str) -> RunSummary:
        """The summary in ``data``; :class:`SummaryError` naming ``source`` and the key when it is not one."""
        if not isinstance(data, Mapping):
            raise SummaryError(f"{source}: not a train_clip run summary (a JSON object is expected)")
        version = data.get("version", SUMMARY_VERSION)  # the first version wrote no "version" key
        if version != SUMMARY_VERSION:
            raise SummaryError(f"{source}: summary version {version!r}; this train_clip reads version "
                               f"{SUMMARY_VERSION} (use the train_clip that wrote it)")
        for key, kind in FIXED_KEYS.items():
            if key in data and not isinstance(data[key], kind):
                raise SummaryError(f"{source}: '{key}' is not {KIND_NAMES[kind]}: not a train_clip run summary")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise SummaryError(f"{source} lacks {', '.join(missing)}: not a whole train_clip run summary")
        try:
            folds = [FoldScore(int(f["fold"]), int(f["best_epoch"]), dict(f["metrics"])) for f in data["folds"]]
        except (KeyError, TypeError, ValueError):
            raise SummaryError(f"{source}: a fold entry lacks fold, best_epoch or metrics") from None
        if data["n_splits"] != len(folds):
            raise SummaryError(f"{source}: {len(folds)} fold(s) for n_splits {data['n_splits']}: not whole")
        return cls(mode=data.get("mode", "cv"), n_splits=data["n_splits"], monitor=data.get("monitor", ""),
                   selection=Selection.from_document(data["selection"], source),
                   image_encoder=str(data.get("image_encoder", "")), text_encoder=str(data.get("text_encoder", "")),
                   class_names=list(map(str, data["class_names"])),
                   folds=folds, mean=dict(data["mean"]), std=dict(data["std"]), oof=dict(data["oof"]),
                   environment=dict(data.get("environment") or {}), wall_time_s=data.get("wall_time_s"),
                   sections={key: value for key, value in data.items() if key not in ALL_FIXED_KEYS},
                   version=version)


FIXED_KEYS: dict[str, type | tuple[type, ...]] = {
    "mode": str, "n_splits": int, "monitor": str, "selection": dict, "image_encoder": str, "text_encoder": str,
    "class_names": list, "folds": list, "mean": dict, "std": dict, "oof": dict, "environment": dict,
    "wall_time_s": (int, float)}
KIND_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list", (int, float): "a number"}
REQUIRED_KEYS = ("n_splits", "selection", "class_names", "folds", "mean", "std", "oof")
ALL_FIXED_KEYS = frozenset(FIXED_KEYS) | {"version"}


def read_summary(path: Path) -> RunSummary:
    """The run summary at ``path`` (a run folder's ``cv_summary.json``)."""
    return RunSummary.from_document(read_json(path, "run summary"), str(path))
