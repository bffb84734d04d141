#!/usr/bin/env python3
"""Does a change cost accuracy? A fixed recipe per data set, seeds x folds, against a baseline.

The data sets (:mod:`benchmarks.quality_data`) ship inside scikit-learn and are written
deterministically: ``digits_imbalanced`` (549 of the 8x8 digits, 150 of class 0 down to 10 of
class 9) and ``textures`` (373 crops of 7 one-texture regions of ``load_sample_images()``, 120
down to 15 per class, a third grayscale). Their hash is part of the recipe a baseline must share.

The recipe (:data:`RECIPES`) is the one a user reported a drop with, made cheap: a resnet18 from
scratch, a trainable pretrained MiniLM text tower (lr 1e-3, text tower x0.1), weighted sampling,
batch 64, the default augmentation, at 16 px and for 5 epochs. Both sets then learn well above
chance without reaching their ceiling (balanced accuracy ~0.83 and ~0.70), where a drop of a few
points shows. The trainer's own cost per step (image tower, the text tower over the class texts,
AdamW over 34M parameters) is most of the time; what is not training is cut where the trainer
under test allows it (see :func:`trainer_flags`).

One child process per data set (:mod:`benchmarks.quality_child`) imports the ``train_clip`` of
``--code-dir`` (default: this repository) and calls its ``main`` once per seed, so an older commit
is measured by pointing ``--code-dir`` at a worktree of it; only flags that wave-1 code (4492ffd)
already had are passed, and the others where the trainer has them. The two data sets train side by
side (``--jobs 2``), one thread each. The seed sets both the model seed and the fold assignment
(``--random-state``): every seed is one repetition of 5-fold CV, and two commits see the same
images in the same folds. The score of a fold is the balanced accuracy of its best epoch (as
``cv_summary.json`` of either commit records it).

With ``--baseline FILE`` (an earlier result of this script) the verdict per data set is worse /
same / better from a paired test over the (seed, fold) pairs; see :func:`compare`. A baseline of
another recipe, other data or other folds is refused. Prints a table and writes
``benchmarks/results/quality_<commit>.json`` (the last commit of ``--code-dir`` that changed the
trainer, see :func:`short_commit`) with the wall time, the CPU seconds of the trainings and the
wall time they would take on idle cores (:func:`idle_wall_estimate`)::

    .venv/bin/python -m benchmarks.bench_quality [--code-dir DIR] [--baseline benchmarks/results/quality_4492ffd.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scipy import stats  # noqa: E402

from benchmarks.output import write_result  # noqa: E402
from benchmarks.quality_data import DATA_SETS, build_data, data_fingerprint  # noqa: E402
from reporting.fold_comparison import corrected_resampled_t_test  # noqa: E402

log = logging.getLogger("bench_quality")
METRIC = "balanced_accuracy"
ALPHA = 0.05  # two-sided level of the paired test behind "worse" / "better"
N_SPLITS = 5
DEFAULT_SEEDS = (1, 2, 3)
CHILD = Path(__file__).resolve().with_name("quality_child.py")


@dataclass(frozen=True)
class Recipe:
    """The training flags of every run of one data set; all exist in train_clip.py since wave 1 (4492ffd)."""

    img_size: int
    epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3  # the image tower starts from scratch; the default 1e-4 suits pretrained ones
    image_encoder: str = "resnet18"  # no ':pretrained': random weights
    text_encoder: str = "all-MiniLM-L6-v2"  # pretrained, in the HuggingFace cache, trained
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


# 16 px: about half the image tower's cost of 32 px (an 8x8 digit has no more to show); 5 epochs.
RECIPES: Mapping[str, Recipe] = {
    "digits_imbalanced": Recipe(img_size=16, epochs=5),
    "textures": Recipe(img_size=16, epochs=5),
}
# Flags that change no score but cost time, passed where the trainer under test has them (see
# :func:`trainer_flags`); --no-save-best (since wave 1) writes one checkpoint per epoch, not two.
SPEED_FLAGS = {"--bootstrap-resamples": ["--bootstrap-resamples", "0"], "--leakage-check": ["--leakage-check", "off"]}


class NotComparable(ValueError):
    """A baseline that was measured on other data, folds or with another recipe."""


def recipes_document(data: Mapping[str, tuple[Path, Path]]) -> dict[str, dict[str, Any]]:
    """Per data set what its scores depend on besides the code: the recipe and the data's hash."""
    return {name: {**asdict(RECIPES[name]), "data_sha256": data_fingerprint(*data[name])} for name in data}


def check_comparable(recipes: Mapping[str, Any], baseline: Mapping[str, Any], name: str) -> None:
    """Refuse a baseline of another recipe or other data for any data set both have (one line)."""
    theirs = baseline.get("recipes", {})
    changed = [data_set for data_set in recipes if theirs.get(data_set) != recipes[data_set]]
    if changed:
        raise NotComparable(f"{name} was measured with another recipe or other data for {', '.join(changed)}: "
                            "measure the baseline's commit again with this script (--code-dir)")


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


def trainer_flags(code_dir: Path) -> list[str]:
    """The flags of every run beyond the recipe, from one ``--help`` of ``code_dir``'s trainer.

    ``--select-on fold`` where the trainer has the flag: its default since issue 21 picks the epoch
    on an inner split of the training fold (fewer training images, an honest choice), which would
    move every score by design. Every stored result picks the best epoch on the fold itself, so a
    comparison of two commits measures their training and not the protocol (the optimism of that
    choice is the same on both sides of each pair). The :data:`SPEED_FLAGS` where it has them.
    """
    shown = subprocess.run([sys.executable, str(code_dir / "train_clip.py"), "--help"], cwd=code_dir,
                           capture_output=True, text=True, check=True).stdout
    flags = ["--no-save-best"] + (["--select-on", "fold"] if "--select-on" in shown else [])
    return flags + [arg for flag, args in SPEED_FLAGS.items() if flag in shown for arg in args]


def run_argv(data_set: str, images: Path, texts: Path, seed: int, out: Path, flags: Sequence[str]) -> list[str]:
    """``train_clip.py`` arguments of one (data set, seed): 5-fold CV whose folds the seed also draws."""
    return ["--data-dir", str(images), "--class-texts-file", str(texts), *RECIPES[data_set].flags(), *flags,
            "--use-cv", "--n-splits", str(N_SPLITS), "--seed", str(seed), "--random-state", str(seed),
            "--output-dir", str(out), "--overwrite", "--log-file", str(out.with_suffix(".log"))]


def start_child(code_dir: Path, argvs: Sequence[Sequence[str]], work: Path, threads: int) -> subprocess.Popen:
    """One :mod:`benchmarks.quality_child` process training ``argvs`` one after the other."""
    (work / "runs.json").write_text(json.dumps(argvs), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    with open(work / "child.log", "w", encoding="utf-8") as stderr:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, str(CHILD), str(code_dir), str(work / "runs.json"),
                                 str(work / "times.json")], cwd=code_dir, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)


def fold_scores(out: Path) -> list[dict[str, Any]]:
    """Per fold of one finished run its balanced accuracy (best epoch, as ``cv_summary.json`` of either
    commit records it) and sizes."""
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


def children_cpu() -> float:
    """User + system CPU seconds of every child process waited for so far (the trainings)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_wall_estimate(first: float, children: Sequence[float], jobs: int) -> float:
    """Wall seconds on ``jobs`` idle cores: ``first`` (the --help probe), then the single-threaded
    children, started in order whenever a core is free, each taking its CPU seconds."""
    cores = [first] * jobs
    for cpu in children:
        cores[cores.index(min(cores))] += cpu
    return max(cores)


def measure(code_dir: Path, data: Mapping[str, tuple[Path, Path]], recipes: Mapping[str, Any],
            seeds: Sequence[int], threads: int, jobs: int, work: Path, partial_out: Path) -> dict[str, Any]:
    """Train every (data set, seed) with the code of ``code_dir``; the result document.

    One child process per data set trains its seeds one after the other (see
    :mod:`benchmarks.quality_child`), ``jobs`` data sets at a time. The document so far is written
    to ``partial_out`` whenever a data set is done ("finished": false).
    """
    commit = short_commit(code_dir)
    started, cpu_before = time.perf_counter(), children_cpu()
    flags = trainer_flags(code_dir)
    probe_cpu = children_cpu() - cpu_before
    runs: list[dict[str, Any]] = []
    child_cpu: dict[str, float] = {}

    def document(finished: bool) -> dict[str, Any]:
        return {"commit": commit, "code_dir": str(code_dir), "recipes": dict(recipes), "trainer_flags": flags,
                "metric": METRIC, "n_splits": N_SPLITS, "seeds": list(seeds), "data_sets": list(data),
                "threads": threads, "jobs": jobs, "finished": finished,
                "seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(children_cpu() - cpu_before, 1), "child_cpu_seconds": dict(child_cpu),
                "idle_wall_seconds_estimate": round(idle_wall_estimate(probe_cpu, list(child_cpu.values()), jobs), 1),
                "machine": platform.platform(), "cpus": os.cpu_count(), "load_average_after": os.getloadavg()[0],
                "runs": sorted(runs, key=lambda run: (run["data_set"], run["seed"]))}

    pending, running = list(data), {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                log.info("%s: %s, seeds %s ...", commit, name, " ".join(map(str, seeds)))
                argvs = [run_argv(name, *data[name], seed, work / name / f"seed{seed}", flags) for seed in seeds]
                running[name] = start_child(code_dir, argvs, work / name, threads)
            done = next((name for name, child in running.items() if child.poll() is not None), None)
            if done is None:
                time.sleep(1)
                continue
            if running.pop(done).returncode != 0:
                tail = (work / done / "child.log").read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"training {done} failed:\n{tail}")
            times = json.loads((work / done / "times.json").read_text(encoding="utf-8"))
            child_cpu[done] = times["process_cpu_s"]
            for seed, spent in zip(seeds, times["runs"]):
                out = work / done / f"seed{seed}"
                folds = json.loads((out / "folds.json").read_text(encoding="utf-8"))
                runs.append({"data_set": done, "seed": seed, "folds": fold_scores(out),
                             "folds_sha256": folds_fingerprint(folds), **spent})
            write_result(partial_out, document(finished=False))
    finally:
        for child in running.values():  # only after a failure: the other data sets are not worth finishing
            child.kill()
            child.wait()
    return document(finished=True)


def comparisons(result: Mapping[str, Any], baseline: Mapping[str, Any], name: str = "the baseline"
                ) -> dict[str, Comparison]:
    """Per data set of ``result`` that the baseline also has: the paired verdict.

    Refused (:class:`NotComparable`) when the baseline's recipe or data differ for a set both have
    (see :func:`check_comparable`), or when a (set, seed) was split into other folds by the two
    commits: its pairs would then compare different validation images.
    """
    shared = {data_set: recipe for data_set, recipe in result["recipes"].items()
              if data_set in baseline.get("data_sets", [])}
    check_comparable(shared, baseline, name)
    theirs_folds = {(run["data_set"], run["seed"]): run["folds_sha256"] for run in baseline["runs"]}
    for run in result["runs"]:
        if theirs_folds.get((run["data_set"], run["seed"]), run["folds_sha256"]) != run["folds_sha256"]:
            raise NotComparable(f"{run['data_set']}, seed {run['seed']}: {name} was trained on other folds")
    found = {}
    for data_set in shared:
        folds = [f for run in result["runs"] if run["data_set"] == data_set for f in run["folds"]]
        found[data_set] = compare(scores_by_pair(result, data_set), scores_by_pair(baseline, data_set),
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
          f"the paired differences; training took {result['seconds'] / 60:.1f} min wall on {result['cpus']} CPUs "
          f"(load {result['load_average_after']:.1f} after), {result['cpu_seconds'] / 60:.1f} CPU-min: "
          f"~{result['idle_wall_seconds_estimate'] / 60:.1f} min on {result['jobs']} idle cores")


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
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of each training (default 1).")
    parser.add_argument("--jobs", type=int, default=2,
                        help="Data sets trained at the same time, one process each (default 2: two cores).")
    parser.add_argument("--out", type=Path, help="Result file (default: benchmarks/results/quality_<commit>.json).")
    parser.add_argument("--workdir", type=Path, help="Keep data and runs here (default: a temporary folder).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.result and not args.baseline:
        parser.error("--result needs --baseline")
    baseline = json.loads(args.baseline.read_text(encoding="utf-8")) if args.baseline else None
    code_dir = args.code_dir.resolve()
    out = args.out or args.result or (
        ROOT / "benchmarks" / "results" / f"quality_{short_commit(code_dir).replace('+', '_')}.json")
    try:
        with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
            work = args.workdir or Path(tmp)
            if args.result:
                result = json.loads(args.result.read_text(encoding="utf-8"))
            else:
                data = {name: build_data(name, work) for name in args.data_sets}
                recipes = recipes_document(data)
                if baseline:  # refused before an hour of training, not after
                    check_comparable(recipes, baseline, str(args.baseline))
                result = measure(code_dir, data, recipes, args.seeds, args.threads, args.jobs, work, out)
        verdicts = comparisons(result, baseline, str(args.baseline)) if baseline else {}
    except NotComparable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
