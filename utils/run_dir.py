"""The run folder: one object for its layout, its state, what it owns, and its lock.

Everyone who reads or writes a run folder (trainer, predict.py, the report, the leaderboard, the
study runner) goes through :class:`RunDir`, so the layout below is spelled out once:

    OUTPUT_DIR/
      .train_clip.lock      held by the running process (host, pid, start time, lease: utils.run_lock)
      progress.json         where the training stands, or how its job failed (utils/progress.py)
      config.json folds.json run_time.json cv_summary.json oof_predictions.csv
      test_predictions.csv test_metrics.json report.md report.zh.md  plots/ (gallery/)  tensorboard/
      frozen_towers.pth     the frozen towers' weights, once per run (checkpoints name it and its hash)
      fold_K/ checkpoint_best.pth checkpoint_latest.pth history.json result.json
              checksums.json  the SHA-256 of each checkpoint, recorded when written (utils/checksums.py)

A run owns exactly these names (and the temporary files of its atomic writes, and the log file
its config names): ``--overwrite`` deletes those and nothing else, and a folder holding anything
else is refused (docs/design.md §6). The temporary files of writes a kill interrupted are never
needed: whoever takes the folder's lock removes them, and so does its holder on the way out.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from utils import run_lock
from utils.errors import UserError
from utils.io import write_json

log = logging.getLogger("train_clip.run_dir")

LOCK_FILE = ".train_clip.lock"
CONFIG_FILE = "config.json"
FOLDS_FILE = "folds.json"
RUN_TIME_FILE = "run_time.json"
SUMMARY_FILE = "cv_summary.json"
OOF_FILE = "oof_predictions.csv"
TEST_PREDICTIONS_FILE = "test_predictions.csv"
TEST_METRICS_FILE = "test_metrics.json"
REPORT_FILE = "report.md"
REPORT_FILES = {"en": REPORT_FILE, "zh": "report.zh.md"}  # --report-lang: the report in each language
PLOTS_DIR = "plots"
GALLERY_DIR = "gallery"  # inside plots/: the saliency heatmaps of report.md's gallery
GALLERY_MANIFEST = "gallery.json"
TENSORBOARD_DIR = "tensorboard"
BEST_CHECKPOINT = "checkpoint_best.pth"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
HISTORY_FILE = "history.json"
RESULT_FILE = "result.json"
FROZEN_TOWERS_FILE = "frozen_towers.pth"
CHECKSUMS_FILE = "checksums.json"
PROGRESS_FILE = "progress.json"

RUN_FILES = frozenset({LOCK_FILE, CONFIG_FILE, FOLDS_FILE, RUN_TIME_FILE, SUMMARY_FILE, OOF_FILE,
                       TEST_PREDICTIONS_FILE, TEST_METRICS_FILE, *REPORT_FILES.values(), FROZEN_TOWERS_FILE,
                       PROGRESS_FILE})
RUN_FOLDERS = frozenset({PLOTS_DIR, TENSORBOARD_DIR})  # everything below them is the run's
FOLD_FILES = frozenset({BEST_CHECKPOINT, LATEST_CHECKPOINT, HISTORY_FILE, RESULT_FILE, CHECKSUMS_FILE})
FOLD_DIR_PATTERN = re.compile(r"fold_([1-9][0-9]*)")
# utils.io.atomic_write's temporary files (".NAME.XXXXXXXX.tmp"), left behind by a killed write.
TEMPORARY_PATTERN = re.compile(r"\.(.+)\.[^.]+\.tmp")
FOREIGN_SHOWN = 3  # foreign paths named in an error message


class RunDirError(UserError):
    """The output folder cannot be used as asked; nothing in it was changed."""


class RunLockedError(RunDirError):
    """Another live process holds the run folder."""


def _is_temporary_of(name: str, owned: frozenset[str]) -> bool:
    match = TEMPORARY_PATTERN.fullmatch(name)
    return bool(match) and match.group(1) in owned


@dataclass(frozen=True)
class RunDir:
    """A run's output folder (which need not exist yet)."""

    path: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> "RunDir":
        """The run a fold's checkpoint (``RUN/fold_K/NAME.pth``) belongs to."""
        return cls(Path(checkpoint).absolute().parent.parent)

    # --- layout ----------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def folds(self) -> Path:
        return self.path / FOLDS_FILE

    @property
    def run_time(self) -> Path:
        return self.path / RUN_TIME_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def oof_predictions(self) -> Path:
        return self.path / OOF_FILE

    @property
    def test_predictions(self) -> Path:
        return self.path / TEST_PREDICTIONS_FILE

    @property
    def test_metrics(self) -> Path:
        return self.path / TEST_METRICS_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    def report_in(self, lang: str) -> Path:
        """report.md (English) or report.zh.md (Chinese)."""
        return self.path / REPORT_FILES[lang]

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR

    @property
    def gallery(self) -> Path:
        return self.plots / GALLERY_DIR

    @property
    def gallery_manifest(self) -> Path:
        return self.gallery / GALLERY_MANIFEST

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def frozen_towers(self) -> Path:
        return self.path / FROZEN_TOWERS_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def progress(self) -> Path:
        return self.path / PROGRESS_FILE

    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold_{fold}"

    def best_checkpoint(self, fold: int) -> Path:
        return self.fold_dir(fold) / BEST_CHECKPOINT

    def latest_checkpoint(self, fold: int) -> Path:
        return self.fold_dir(fold) / LATEST_CHECKPOINT

    def model_checkpoint(self, fold: int) -> Path | None:
        """The fold's model for inference: ``checkpoint_best.pth``, else (``--no-save-best``) the latest."""
        return next((p for p in (self.best_checkpoint(fold), self.latest_checkpoint(fold)) if p.is_file()), None)

    def history(self, fold: int) -> Path:
        return self.fold_dir(fold) / HISTORY_FILE

    def fold_result(self, fold: int) -> Path:
        return self.fold_dir(fold) / RESULT_FILE

    # --- state -----------------------------------------------------------------------------
    def fold_numbers(self) -> list[int]:
        """Numbers of the ``fold_K`` folders present, sorted."""
        if not self.path.is_dir():
            return []
        found = (FOLD_DIR_PATTERN.fullmatch(p.name) for p in self.path.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def planned_folds(self) -> list[int]:
        """The folds ``folds.json`` planned (empty when it is missing or unreadable)."""
        document = _read_json_or_none(self.folds)
        folds = document.get("folds") if isinstance(document, dict) else None
        if not isinstance(folds, list):
            return []
        return [f["fold"] for f in folds if isinstance(f, dict) and isinstance(f.get("fold"), int)]

    def fold_finished(self, fold: int) -> bool:
        return self.fold_result(fold).is_file()

    def unfinished_folds(self) -> list[int]:
        """Planned folds without a ``result.json`` (all present folds when nothing was planned)."""
        return [k for k in (self.planned_folds() or self.fold_numbers()) if not self.fold_finished(k)]

    def is_finished(self) -> bool:
        """Every planned fold finished and ``cv_summary.json`` written (the trainer's last result file)."""
        summary = _read_json_or_none(self.summary)
        return (isinstance(summary, dict) and bool(self.planned_folds())
                and not self.unfinished_folds())

    def status(self) -> str:
        """``complete`` (finished), ``partial`` (something of a run is there) or ``empty``."""
        if self.is_finished():
            return "complete"
        if self.path.is_dir() and any(not is_bookkeeping_name(p.name) for p in self.path.iterdir()):
            return "partial"
        return "empty"

    def wall_time_s(self) -> float:
        """Seconds spent on this run over all its segments (first start, resumptions)."""
        segments = _read_json_or_none(self.run_time)
        if not isinstance(segments, dict) or not isinstance(segments.get("segments"), list):
            return 0.0
        return float(sum(s.get("seconds", 0.0) for s in segments["segments"] if isinstance(s, dict)))

    def record_time(self, segment_started: str, seconds: float) -> None:
        """Note the seconds this invocation (``segment_started``: its start time) has spent so far."""
        document = _read_json_or_none(self.run_time)
        segments = document.get("segments") if isinstance(document, dict) else None
        segments = [s for s in segments if isinstance(s, dict)] if isinstance(segments, list) else []
        others = [s for s in segments if s.get("started") != segment_started]
        write_json(self.run_time, {"segments": others + [{"started": segment_started,
                                                          "seconds": round(seconds, 3)}]})

    # --- ownership -------------------------------------------------------------------------
    def owned_log_file(self) -> Path | None:
        """The log file the run's ``config.json`` names, when it lies inside the folder."""
        config = _read_json_or_none(self.config)
        name = config.get("log_file") if isinstance(config, dict) else None
        if not isinstance(name, str) or not name:
            return None
        path = Path(name).resolve()
        return path if self.path.resolve() in path.parents else None

    def _kept_logs(self, keep: Path | None) -> frozenset[Path]:
        """This invocation's log file and the one the run's config names: never foreign, never deleted."""
        return frozenset(p for p in (keep, self.owned_log_file()) if p is not None)

    def owns(self, path: Path, extra: frozenset[Path] = frozenset()) -> bool:
        """Whether ``path`` (inside the folder) is a file or folder a run writes."""
        relative = path.relative_to(self.path).parts
        resolved = path.resolve()
        if resolved in extra or (path.is_dir() and any(resolved in e.parents for e in extra)):
            return True  # the log file (or a folder on the way to it)
        top = relative[0]
        if top in RUN_FOLDERS:
            return True
        if len(relative) == 1:
            return top in RUN_FILES or _is_temporary_of(top, RUN_FILES) or bool(
                FOLD_DIR_PATTERN.fullmatch(top) and path.is_dir() and not path.is_symlink())
        if FOLD_DIR_PATTERN.fullmatch(top) and len(relative) == 2:
            return relative[1] in FOLD_FILES or _is_temporary_of(relative[1], FOLD_FILES)
        return False

    def temporary_files(self) -> list[Path]:
        """Temporary files of the run's atomic writes (not the lock's own claims) left by a killed write."""
        if not self.path.is_dir():
            return []
        folders = [(self.path, RUN_FILES - {LOCK_FILE}), *((self.fold_dir(k), FOLD_FILES) for k in self.fold_numbers())]
        return [p for folder, names in folders for p in sorted(folder.iterdir())
                if p.is_file() and _is_temporary_of(p.name, names)]

    def remove_temporaries(self) -> None:
        """Delete :meth:`temporary_files`; only the folder's lock holder may (nobody else writes then)."""
        for path in self.temporary_files():
            log.info("Removing %s, left by an interrupted write", path)
            path.unlink(missing_ok=True)

    def foreign_paths(self, keep: Path | None = None) -> list[Path]:
        """Everything in the folder that no run writes (``keep``: this invocation's own log file)."""
        if not self.path.is_dir():
            return []
        extra = self._kept_logs(keep)
        foreign: list[Path] = []
        pending = [self.path]
        while pending:
            for child in sorted(pending.pop().iterdir()):
                if not self.owns(child, extra):
                    foreign.append(child)
                elif child.is_dir() and not child.is_symlink() and child.name not in RUN_FOLDERS:
                    pending.append(child)
        return foreign

    def holds_results(self, keep: Path | None = None) -> bool:
        """Whether any file of a run (other than the bookkeeping and ``keep``) is there."""
        if not self.path.is_dir():
            return False
        return any(p.is_file() and not is_bookkeeping_name(p.name) and p.resolve() != keep
                   for p in self.path.rglob("*"))

    def check_only_run_files(self, keep: Path | None = None) -> None:
        """Refuse a folder that holds anything a run does not write (it is someone's folder)."""
        foreign = self.foreign_paths(keep)
        if foreign:
            shown = ", ".join(str(p.relative_to(self.path)) for p in foreign[:FOREIGN_SHOWN])
            more = f" and {len(foreign) - FOREIGN_SHOWN} more" if len(foreign) > FOREIGN_SHOWN else ""
            raise RunDirError(f"--output-dir {self.path} holds files that are not a train_clip run's ({shown}"
                              f"{more}); train_clip writes and deletes only its own files: choose an empty "
                              "or new folder")

    def clear(self, keep: Path | None = None) -> None:
        """Delete the run's own files for ``--overwrite``: never the lock, ``keep``, or anything foreign.

        Callers check :meth:`check_only_run_files` first; what is not the run's is left alone anyway.
        """
        extra = self._kept_logs(keep)
        for child in sorted(self.path.iterdir()):
            if is_lock_name(child.name) or (keep is not None and child.resolve() == keep):
                continue
            if not self.owns(child, extra):
                continue
            if child.is_dir() and not child.is_symlink():
                if child.name in RUN_FOLDERS:
                    shutil.rmtree(child)
                else:  # fold_K: only its known files, then the folder if that emptied it
                    for file in child.iterdir():
                        if self.owns(file):
                            file.unlink()
                    with contextlib.suppress(OSError):
                        child.rmdir()
            elif child.resolve() not in extra:  # the config's log file is kept: it may be this run's
                child.unlink()

    # --- lock ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process, also against processes on other hosts of a shared file
        system (:mod:`utils.run_lock`: an atomic claim, the OS lock, a lease renewed by a thread).

        A second process is refused with :class:`RunLockedError` naming the holder. A holder that died
        without releasing is taken over with a warning: at once on the same host, after its lease from
        another host. A lock file (and folder) this call created is removed again when no run file was
        written, so a run refused before writing anything leaves nothing behind. Temporary files of
        interrupted writes are removed on taking the lock and on leaving (SIGTERM included:
        :func:`utils.run_lock.hold` turns it into :class:`utils.run_lock.Terminated`).
        """
        created_dir, created_lock = not self.path.exists(), not self.lock_file.exists()
        with contextlib.ExitStack() as stack:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                held = stack.enter_context(run_lock.hold(self.lock_file))
            except run_lock.LockHeld as exc:
                raise self._in_use(exc.holder) from None
            except run_lock.LockContended:
                raise RunLockedError(f"--output-dir {self.path}: could not take its lock; other processes keep "
                                     "taking it") from None
            except OSError as exc:
                raise RunDirError(f"--output-dir {self.path} cannot be written: {exc.strerror or exc}") from None
            try:
                self.remove_temporaries()
                yield
            finally:
                # Still holding the lock: nobody else can be using the folder while it is tidied.
                self.remove_temporaries()
                if created_lock and not any(self.owns(p) for p in self.path.iterdir()
                                            if not is_bookkeeping_name(p.name)):
                    held.remove()
                    if created_dir and not any(self.path.iterdir()):
                        self.path.rmdir()

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (host, pid, started), or None when nobody does (or its holder is gone)."""
        return run_lock.live_holder(self.lock_file)

    def refuse_if_held_by_another(self) -> None:
        """Raise :class:`RunLockedError` naming the holder when another live process holds the folder."""
        holder = self.lock_holder()
        if holder is not None and not run_lock.is_this_process(holder):
            raise self._in_use(holder)

    def _in_use(self, holder: dict[str, Any]) -> RunLockedError:
        return RunLockedError(f"--output-dir {self.path} is in use by {run_lock.describe(holder)}; wait for it "
                              "to finish or choose another folder")


def is_lock_name(name: str) -> bool:
    """The lock file, or a claim or break file of :mod:`utils.run_lock` (bookkeeping, not results)."""
    return name == LOCK_FILE or _is_temporary_of(name, frozenset({LOCK_FILE}))


def is_bookkeeping_name(name: str) -> bool:
    """The lock's files or the progress record: a folder holding only these holds no results."""
    return is_lock_name(name) or name == PROGRESS_FILE or _is_temporary_of(name, frozenset({PROGRESS_FILE}))


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError):
        return None
