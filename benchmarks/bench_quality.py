#!/usr/bin/env python3
"""Does a change cost accuracy? A fixed recipe on fixed small data sets, seeds x folds, against a baseline.

The data sets ship inside scikit-learn (nothing is downloaded; scikit-image, whose ``skimage.data``
textures the issue suggested, is not in the virtualenv), and are written here, deterministically:

* ``digits_imbalanced``: scikit-learn's 8x8 handwritten digits, the first 150 of class 0 down to
  the first 10 of class 9 (geometric counts, 10 classes): a class imbalance of 15:1, 548 images.
* ``textures``: 8 classes, each one region of ``load_sample_images()`` (two photographs, a temple
  and a flower, cut into 2 x 2 quadrants); 120 down to 15 crops of 48 px per class at random
  places and scales of the region (423 images); a third of each class saved as grayscale (mode L), the rest RGB.

The recipe is the one a user reported a drop with (see ``RECIPE``): a resnet18 from scratch, a
trainable pretrained MiniLM text tower, weighted sampling, batch 64, the default augmentation,
shrunk to 32 px and 6 epochs: one commit took 41-50 min on a shared 2-core machine (load ~5).

Each (data set, seed) is one ``train_clip.py --use-cv`` process of the code in ``--code-dir``
(default: this repository), so an older commit is measured by pointing ``--code-dir`` at a worktree
of it; only flags that wave-1 code (4492ffd) already had are passed, and ``--select-on fold``
where the trainer has it (see :func:`selection_flags`). The seed sets both the model
seed and the fold assignment (``--random-state``): every seed is one repetition of 5-fold CV, and
two commits see the same images in the same folds. The score of a fold is the balanced accuracy
of its best epoch (as ``cv_summary.json`` of either commit records it).

With ``--baseline FILE`` (an earlier result of this script) the verdict per data set is worse /
same / better from a paired test over the (seed, fold) pairs; see :func:`compare`. Prints a table
and writes ``benchmarks/results/quality_<commit>.json`` (the last commit of ``--code-dir`` that changed
the trainer, see :func:`short_commit`)::

    .venv/bin/python benchmarks/bench_quality.py [--code-dir DIR] [--baseline benchmarks/results/quality_4492ffd.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from reporting.fold_comparison import corrected_resampled_t_test  # noqa: E402
from utils.io import write_json  # noqa: E402

log = logging.getLogger("bench_quality")
METRIC = "balanced_accuracy"
ALPHA = 0.05  # two-sided level of the paired test behind "worse" / "better"
N_SPLITS = 5
DEFAULT_SEEDS = (1, 2, 3)
# The data of every set is drawn from this seed alone, never from --seeds: the images stay the
# same whatever seeds or commits are compared.
DATA_SEED = 0


@dataclass(frozen=True)
class Recipe:
    """The training flags of every run; all exist in train_clip.py since wave 1 (4492ffd)."""

    image_encoder: str = "resnet18"  # no ':pretrained': random weights
    text_encoder: str = "all-MiniLM-L6-v2"  # pretrained, in the HuggingFace cache, trained
    img_size: int = 32
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-3  # the image tower starts from scratch; the default 1e-4 suits pretrained ones
    text_lr_mult: float = 0.1  # the pretrained text tower: 1e-4, the trainer's default rate
    weighted_sampling: bool = True
    num_workers: int = 0  # worker processes only cost start-up on two cores

    def flags(self) -> list[str]:
        return ["--image-encoder", self.image_encoder, "--text-encoder", self.text_encoder,
                "--img-size", str(self.img_size), "--epochs", str(self.epochs),
                "--batch-size", str(self.batch_size), "--learning-rate", str(self.learning_rate),
                "--text-lr-mult", str(self.text_lr_mult),
                "--num-workers", str(self.num_workers)] + (
                    ["--use-weighted-sampling"] if self.weighted_sampling else [])


RECIPE = Recipe()


def geometric_counts(largest: int, smallest: int, n_classes: int) -> list[int]:
    """Class sizes falling geometrically from ``largest`` to ``smallest``."""
    ratio = (smallest / largest) ** (1 / (n_classes - 1))
    return [round(largest * ratio ** c) for c in range(n_classes)]


def build_digits_imbalanced(out: Path) -> dict[str, list[str]]:
    """The digits set (see the module docstring) under ``out``; returns the class texts."""
    from sklearn.datasets import load_digits

    from data.demo import NUMBER_WORDS_EN

    digits = load_digits()
    texts = {}
    for digit, count in enumerate(geometric_counts(150, 10, 10)):
        name = f"{digit}_{NUMBER_WORDS_EN[digit]}"
        (out / name).mkdir(parents=True)
        images = digits.images[digits.target == digit][:count]
        for i, pixels in enumerate(images):
            array = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
            Image.fromarray(array, mode="L").save(out / name / f"{i:04d}.png")
        texts[name] = [f"a handwritten digit {NUMBER_WORDS_EN[digit]}"]
    return texts


TEXTURE_CLASSES = [  # (photograph, quadrant row, quadrant column, description)
    ("china", 0, 0, "sky above the roof of a chinese temple"),
    ("china", 0, 1, "curved temple roof with red beams"),
    ("china", 1, 0, "green trees and stone in front of a temple"),
    ("china", 1, 1, "columns and shadows under a temple roof"),
    ("flower", 0, 0, "dark green leaves around a flower"),
    ("flower", 0, 1, "pink petals of a dahlia"),
    ("flower", 1, 0, "yellow and orange centre of a flower"),
    ("flower", 1, 1, "petals and leaves blurred in the background"),
]
TEXTURE_COUNTS = geometric_counts(120, 15, len(TEXTURE_CLASSES))
TEXTURE_CROP = 48


def build_textures(out: Path) -> dict[str, list[str]]:
    """The textures set (see the module docstring) under ``out``; returns the class texts."""
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {Path(f).stem: image for f, image in zip(sample.filenames, sample.images)}
    rng = np.random.default_rng(DATA_SEED)
    texts = {}
    for number, ((photo, row, col, text), count) in enumerate(zip(TEXTURE_CLASSES, TEXTURE_COUNTS)):
        image = photos[photo]
        half_h, half_w = image.shape[0] // 2, image.shape[1] // 2
        region = image[row * half_h:(row + 1) * half_h, col * half_w:(col + 1) * half_w]
        name = f"{number}_{photo}_{row}{col}"
        (out / name).mkdir(parents=True)
        for i in range(count):
            # Crops of 48..96 px resized to 48: one class is a texture at several scales.
            side = int(rng.integers(TEXTURE_CROP, 2 * TEXTURE_CROP + 1))
            top = int(rng.integers(0, region.shape[0] - side + 1))
            left = int(rng.integers(0, region.shape[1] - side + 1))
            crop = Image.fromarray(region[top:top + side, left:left + side]).resize(
                (TEXTURE_CROP, TEXTURE_CROP), Image.BILINEAR)
            (crop.convert("L") if i % 3 == 0 else crop).save(out / name / f"{i:04d}.png")
        texts[name] = [f"a photo of {text}"]
    return texts


DATA_SETS: Mapping[str, Callable[[Path], dict[str, list[str]]]] = {
    "digits_imbalanced": build_digits_imbalanced,
    "textures": build_textures,
}


def build_data(name: str, work: Path) -> tuple[Path, Path]:
    """One data set as a folder per class and its class-texts file; returns both paths."""
    images = work / name / "images"
    texts = DATA_SETS[name](images)
    texts_file = work / name / "class_texts.json"
    write_json(texts_file, texts)
    return images, texts_file


# What a commit's accuracy depends on: everything but the benchmarks, tests and documentation.
# A branch that only adds a benchmark (like the one that added this file) measures its base's code.
TRAINER_FILES = [".", ":(exclude)benchmarks", ":(exclude)tests", ":(exclude)docs", ":(exclude)*.md"]


def short_commit(code_dir: Path) -> str:
    """The last commit of ``code_dir`` that changed :data:`TRAINER_FILES`, '+dirty' when they differ from it."""
    def git(*command: str) -> str:
        return subprocess.run(["git", "-C", str(code_dir), *command], check=True, capture_output=True,
                              text=True).stdout.strip()

    commit = git("log", "-1", "--format=%h", "--abbrev=7", "HEAD", "--", *TRAINER_FILES)
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *TRAINER_FILES)
    return commit + ("+dirty" if dirty else "")


def selection_flags(code_dir: Path) -> list[str]:
    """``--select-on fold`` where ``code_dir``'s trainer has the flag: its default since issue 21 picks
    the epoch on an inner split of the training fold (fewer training images, an honest choice),
    which would move every score by design. Every stored result picks the best epoch on the fold
    itself, so a comparison of two commits measures their training and not the protocol (the
    optimism of that choice is the same on both sides of each pair)."""
    shown = subprocess.run([sys.executable, str(code_dir / "train_clip.py"), "--help"], cwd=code_dir,
                           capture_output=True, text=True, check=True).stdout
    return ["--select-on", "fold"] if "--select-on" in shown else []


def run_cv(code_dir: Path, images: Path, texts: Path, seed: int, out: Path, recipe: Recipe,
           threads: int) -> list[dict[str, Any]]:
    """One ``train_clip.py --use-cv`` run of ``code_dir``; per fold its balanced accuracy and sizes."""
    command = [sys.executable, str(code_dir / "train_clip.py"), "--data-dir", str(images),
               "--class-texts-file", str(texts), *recipe.flags(), *selection_flags(code_dir), "--use-cv",
               "--n-splits", str(N_SPLITS), "--seed", str(seed), "--random-state", str(seed), "--output-dir",
               str(out), "--overwrite"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    finished = subprocess.run(command, cwd=code_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"train_clip.py failed ({finished.returncode}): {finished.stderr[-3000:]}")
    summary = json.loads((out / "cv_summary.json").read_text(encoding="utf-8"))
    folds = {f["fold"]: f for f in json.loads((out / "folds.json").read_text(encoding="utf-8"))["folds"]}
    return [{"fold": f["fold"], METRIC: f["metrics"][METRIC], "n_train": len(folds[f["fold"]]["train"]),
             "n_val": len(folds[f["fold"]]["val"])} for f in sorted(summary["folds"], key=lambda f: f["fold"])]


def folds_fingerprint(folds_json: Mapping[str, Any]) -> str:
    """SHA-256 of which files each fold validates on: two runs' folds pair only when these match."""
    assignment = sorted((f["fold"], sorted(f["val"])) for f in folds_json["folds"])
    return hashlib.sha256(json.dumps(assignment).encode()).hexdigest()


@dataclass(frozen=True)
class Comparison:
    """One data set, this run against the baseline, over the (seed, fold) pairs both have."""

    pairs: int
    mean_difference: float  # this - baseline
    t: float
    p_value: float
    # The smallest mean difference this test would have called at this spread of the differences:
    # "same" means "no change of this size or more", not "no change".
    detectable: float
    verdict: str  # "worse", "same" or "better"


def compare(current: Mapping[tuple[int, int], float], baseline: Mapping[tuple[int, int], float],
            n_train: float, n_val: float, alpha: float = ALPHA) -> Comparison:
    """The paired verdict of one data set from its scores keyed by (seed, fold).

    Why this test: the pairs are not independent. Within a seed the 5 folds share 3/4 of their
    training images, and each seed re-splits the same images, so a plain paired t-test (or a
    Wilcoxon signed-rank test, which also assumes independent pairs) over the 15 differences
    calls noise a change far more often than ``alpha``. The corrected resampled t-test of Nadeau &
    Bengio (2003), in the form for r repetitions of K-fold CV (Bouckaert & Frank 2004: variance
    times ``1/(rK) + n_val/n_train``, rK - 1 degrees of freedom), is built for exactly these
    differences, and the repository already has it (:mod:`reporting.fold_comparison`).
    """
    keys = sorted(set(current) & set(baseline))
    if len(keys) < 2:
        raise ValueError(f"need at least two (seed, fold) pairs in both runs, got {len(keys)}")
    differences = [current[k] - baseline[k] for k in keys]
    test = corrected_resampled_t_test(differences, n_train, n_val)
    detectable = float(stats.t.ppf(1 - alpha / 2, test.dof)) * math.sqrt(
        (1 / len(keys) + n_val / n_train) * statistics.variance(differences))
    if test.p_value < alpha:
        verdict = "better" if test.mean_difference > 0 else "worse"
    else:
        verdict = "same"
    return Comparison(len(keys), test.mean_difference, test.t, test.p_value, detectable, verdict)


def scores_by_pair(result: Mapping[str, Any], data_set: str) -> dict[tuple[int, int], float]:
    """(seed, fold) -> balanced accuracy of one data set in a result document of this script."""
    return {(run["seed"], fold["fold"]): fold[METRIC]
            for run in result["runs"] if run["data_set"] == data_set for fold in run["folds"]}


def mean_std(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else "-"


def measure(code_dir: Path, data_sets: Sequence[str], seeds: Sequence[int], threads: int,
            workdir: Path | None, partial_out: Path) -> dict[str, Any]:
    """Train every (data set, seed) with the code of ``code_dir``; the result document.

    The document so far is written to ``partial_out`` after every run ("finished": false), so that
    an interrupted benchmark of an hour on a busy machine keeps the runs it finished.
    """
    commit = short_commit(code_dir)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()

    def document(finished: bool) -> dict[str, Any]:
        return {"commit": commit, "code_dir": str(code_dir), "recipe": asdict(RECIPE), "metric": METRIC,
                "n_splits": N_SPLITS, "seeds": list(seeds), "data_sets": list(data_sets), "threads": threads,
                "finished": finished, "seconds": round(time.perf_counter() - started, 1),
                "machine": platform.platform(), "cpus": os.cpu_count(), "load_average_after": os.getloadavg()[0],
                "runs": runs}

    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        work = workdir or Path(tmp)
        for data_set in data_sets:
            shutil.rmtree(work / data_set, ignore_errors=True)
            images, texts = build_data(data_set, work)
            for seed in seeds:
                log.info("%s: %s, seed %d ...", commit, data_set, seed)
                run_started = time.perf_counter()
                run_dir = work / data_set / f"run_seed{seed}"
                folds = run_cv(code_dir, images, texts, seed, run_dir, RECIPE, threads)
                fingerprint = folds_fingerprint(json.loads((run_dir / "folds.json").read_text(encoding="utf-8")))
                runs.append({"data_set": data_set, "seed": seed, "folds": folds, "folds_sha256": fingerprint,
                             "seconds": round(time.perf_counter() - run_started, 1)})
                write_result(partial_out, document(finished=False))
    return document(finished=True)


def comparisons(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Comparison]:
    """Per data set of ``result`` that the baseline also has: the paired verdict.

    Refused when a (set, seed) was split into other folds by the two commits (a changed fold
    assignment or data builder): its pairs would then compare different validation images.
    """
    theirs_folds = {(run["data_set"], run["seed"]): run["folds_sha256"] for run in baseline["runs"]}
    for run in result["runs"]:
        if theirs_folds.get((run["data_set"], run["seed"]), run["folds_sha256"]) != run["folds_sha256"]:
            raise ValueError(f"{run['data_set']}, seed {run['seed']}: the baseline was trained on other folds")
    found = {}
    for data_set in result["data_sets"]:
        theirs = scores_by_pair(baseline, data_set)
        if theirs:
            folds = [f for run in result["runs"] if run["data_set"] == data_set for f in run["folds"]]
            found[data_set] = compare(scores_by_pair(result, data_set), theirs,
                                      statistics.fmean(f["n_train"] for f in folds),
                                      statistics.fmean(f["n_val"] for f in folds))
    return found


def print_table(result: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                verdicts: Mapping[str, Comparison]) -> None:
    header = f"{'data set':<20}{result['commit']:>16}"
    if baseline:
        header += f"{baseline['commit']:>16}{'Δ (paired)':>12}{'p':>8}{'detectable':>12}  verdict"
    print("\n" + header)
    for data_set in result["data_sets"]:
        line = f"{data_set:<20}{mean_std(list(scores_by_pair(result, data_set).values())):>16}"
        if data_set in verdicts:
            c = verdicts[data_set]
            line += (f"{mean_std(list(scores_by_pair(baseline, data_set).values())):>16}"
                     f"{c.mean_difference:>+12.3f}{c.p_value:>8.3f}{c.detectable:>12.3f}  {c.verdict}")
        print(line)
    print(f"\nmean ± std of {METRIC} over {len(result['seeds'])} seeds x {result['n_splits']} folds; Δ: mean of "
          f"the paired differences; training took {result['seconds'] / 60:.1f} min on {result['cpus']} CPUs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code-dir", type=Path, default=ROOT,
                        help="Checkout whose train_clip.py is measured (default: this repository).")
    parser.add_argument("--baseline", type=Path, help="An earlier result of this script to compare with.")
    parser.add_argument("--result", type=Path,
                        help="Compare this earlier result with --baseline instead of training (and rewrite it "
                             "with the comparison).")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--data-sets", nargs="+", choices=sorted(DATA_SETS), default=sorted(DATA_SETS))
    parser.add_argument("--threads", type=int, default=1,
                        help="Torch threads of each training (default 1: a commit and its baseline can run "
                             "side by side on two cores).")
    parser.add_argument("--out", type=Path, help="Result file (default: benchmarks/results/quality_<commit>.json).")
    parser.add_argument("--workdir", type=Path, help="Keep data and runs here (default: a temporary folder).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.result and not args.baseline:
        parser.error("--result needs --baseline")
    baseline = json.loads(args.baseline.read_text(encoding="utf-8")) if args.baseline else None
    if baseline and baseline["recipe"] != asdict(RECIPE):
        parser.error(f"{args.baseline} was measured with another recipe: {baseline['recipe']}")
    code_dir = args.code_dir.resolve()
    out = args.out or args.result or (
        ROOT / "benchmarks" / "results" / f"quality_{short_commit(code_dir).replace('+', '_')}.json")
    if args.result:
        result = json.loads(args.result.read_text(encoding="utf-8"))
    else:
        result = measure(code_dir, args.data_sets, args.seeds, args.threads, args.workdir, out)
    try:
        verdicts = comparisons(result, baseline) if baseline else {}
    except ValueError as error:
        parser.error(str(error))
    print_table(result, baseline, verdicts)
    if baseline:
        result["baseline"] = {"file": str(args.baseline), "commit": baseline["commit"], "alpha": ALPHA,
                              "test": "corrected repeated k-fold t-test (Nadeau & Bengio 2003; "
                                      "Bouckaert & Frank 2004) of the per-(seed, fold) differences",
                              "comparisons": {name: asdict(c) for name, c in verdicts.items()}}
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
