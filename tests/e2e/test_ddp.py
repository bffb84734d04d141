"""One training over several processes (issue 13): torchrun with gloo on the CPU, 2 processes.

The reference is one process with the same global ``--batch-size``. The image encoder is
timm's ConvNeXt-atto (LayerNorm, no BatchNorm) and trainable, so that every tower learns and a
process's batch statistics cannot differ from one process's: the runs must then agree up to
floating-point rounding. Rounding differs because the processes' rows are gathered rank by rank
(another order of the sums in the loss), DDP all-reduces the gradients (another order of their
sums) and a convolution over 2 images may take another kernel path than over 4. Those
differences are ~1e-7 after one step, but AdamW divides each gradient by its own running size, so
a component near zero whose sign rounding flips moves by a whole learning-rate step: over the 9
steps of a fold they grow to ~1e-4 (measured: 2e-4 on one epoch's loss in one run of five), and how
far they grow depends on the CPU's kernels. Float64 is not an option for a whole torchrun training,
so the tolerance sits between the two scales instead (tests/equivalence.py): 1e-2 on every metric
and loss is 50 times the growth measured here, and still 8 times below the smallest effect of a
real difference: one image of a fold classified otherwise moves a metric by 1/12 (12 validation
images), one image drawn twice in an epoch moves its loss by ~1e-1.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import train_clip
from tests.conftest import ROOT
from tests.helpers import make_image_tree
from training.distributed import Distributed, ShardedBatchSampler, merge_evaluations, shard
from utils.io import load_checkpoint

TOLERANCE = 1e-2  # see the module's docstring


def base_args(data: Path, text_encoder: Path) -> list[str]:
    return ["--data-dir", str(data), "--text-encoder", f"hf:{text_encoder}", "--image-encoder", "timm:convnext_atto",
            "--img-size", "32", "--epochs", "3", "--batch-size", "4", "--num-workers", "0", "--use-cv",
            "--n-splits", "2", "--learning-rate", "2e-3", "--augmentation", "standard", "--use-weighted-sampling"]


def environment() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def torchrun(processes: int, args: list[str]) -> list[str]:
    # Port 0 under the c10d rendezvous: the launcher picks a free port, so parallel tests never clash.
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", str(ROOT / "train_clip.py"), *args]


def single(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "train_clip.py"), *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_text_encoder) -> tuple[Path, list[str]]:
    """Data, the common arguments, and an uninterrupted single-process run of them (in this process)."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_image_tree(root / "data", {"a": 8, "b": 8, "c": 8})
    args = base_args(data, tiny_text_encoder)
    assert train_clip.main(args + ["--output-dir", str(root / "single"), "--log-file", str(root / "single.log")]) == 0
    return root, args


def metrics_of(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in ("folds", "mean", "std", "oof")}


def assert_close(actual: Any, expected: Any, where: str = "") -> None:
    """Equal structure and strings; numbers within TOLERANCE (NaN equals NaN)."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool) and expected is not None:
        assert actual == pytest.approx(expected, abs=TOLERANCE, nan_ok=True), where
    else:
        assert actual == expected, where


def oof_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "oof_predictions.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_results(run_dir: Path, reference_dir: Path) -> None:
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    expected = json.loads((reference_dir / "cv_summary.json").read_text())
    assert_close(metrics_of(summary), metrics_of(expected))
    assert (run_dir / "folds.json").read_bytes() == (reference_dir / "folds.json").read_bytes()
    rows, expected_rows = oof_rows(run_dir), oof_rows(reference_dir)
    assert [(r["path"], r["fold"], r["predicted_class"]) for r in rows] == \
        [(r["path"], r["fold"], r["predicted_class"]) for r in expected_rows]


def test_two_gloo_processes_give_the_single_process_results(reference):
    root, args = reference
    out, log_file = root / "ddp", root / "ddp.log"
    done = subprocess.run(torchrun(2, args + ["--output-dir", str(out), "--log-file", str(log_file)]),
                          env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_results(out, root / "single")
    # The training losses are those of the whole global batch, as in one process.
    for fold in (1, 2):
        ddp = json.loads((out / f"fold_{fold}" / "history.json").read_text())
        one = json.loads((root / "single" / f"fold_{fold}" / "history.json").read_text())
        assert [row["epoch"] for row in ddp] == [0, 1, 2, 3]
        assert_close([row.get("train_loss") for row in ddp], [row.get("train_loss") for row in one])
    # Rank 0 alone logs below warnings and writes the log file: each event once.
    text = log_file.read_text()
    assert "One training over 2 processes" in text and "global batch, 2 images per process" in text
    assert text.count("Fold 2 done") == 1 and "[rank 1]" not in text
    assert "[rank 1]" not in done.stderr  # rank 1 had nothing to warn about


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (Linux /proc): torchrun starts each worker in a session of its own."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def is_dead(pid: int) -> bool:
    """Gone, or a zombie whose every thread has ended. The main thread turns zombie first while the
    others are still exiting, and the files (the lock's among them) close with the last thread."""
    try:
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for task in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:  # the process, or one of its threads, is gone meanwhile: look again
        return not Path(f"/proc/{pid}").exists()
    return all(state in ("Z", "X") for state in states)


def run_until_fold_2_epoch_1(command: list[str], out: Path) -> None:
    """Start a run, and SIGKILL it (every process of it, as a machine that dies) once fold 2 has
    finished epoch 1."""
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "fold_2" / "history.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            try:
                if len(json.loads(history.read_text())) >= 2:  # epochs 0 and 1 of fold 2 are done
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed in fold 2"
    finally:
        processes = [*descendants(process.pid), process.pid]
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
        while not all(map(is_dead, processes)):  # rank 0 holds the folder's lock until it is dead
            time.sleep(0.02)
    assert not (out / "cv_summary.json").exists()
    assert (out / "fold_1" / "result.json").exists()
    assert "optimizer" in load_checkpoint(out / "fold_2" / "checkpoint_latest.pth")


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_killed_in_fold_2_resumes_with_another_number_of_processes(reference, before, after):
    root, args = reference
    out, log_file = root / f"killed_{before}_{after}", root / f"resumed_{before}_{after}.log"
    start = args + ["--output-dir", str(out), "--log-file", str(root / f"killed_{before}_{after}.log")]
    run_until_fold_2_epoch_1(torchrun(2, start) if before == 2 else single(start), out)

    resume = ["--resume", "--output-dir", str(out), "--log-file", str(log_file)]
    if after == 1:
        assert train_clip.main(resume) == 0
    else:
        done = subprocess.run(torchrun(2, resume), env=environment(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    text = log_file.read_text()
    assert "Fold 1 finished earlier" in text and "Fold 2: resuming after epoch" in text
    epochs = [row["epoch"] for row in json.loads((out / "fold_2" / "history.json").read_text())]
    assert epochs == [0, 1, 2, 3]  # no epoch lost or repeated
    # The training state does not depend on the number of processes: the results are the uninterrupted ones.
    assert_same_results(out, root / "single")


def test_processes_share_each_global_batch_without_overlap():
    sampler = list(range(11))
    whole = list(torch.utils.data.BatchSampler(sampler, 4, drop_last=True))
    shares = [list(ShardedBatchSampler(sampler, 4, True, rank, 2)) for rank in (0, 1)]
    assert len(shares[0]) == len(whole) == 2  # the schedule counts global steps
    for step, batch in enumerate(whole):
        assert sorted(shares[0][step] + shares[1][step]) == sorted(batch)
        assert not set(shares[0][step]) & set(shares[1][step])
    assert sorted(shard(range(7), 0, 3) + shard(range(7), 1, 3) + shard(range(7), 2, 3)) == list(range(7))


def test_merged_evaluations_count_each_image_once_in_index_order():
    first = (np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), np.array([4, 0]), 0.5)
    second = (np.array([[0.6, 0.4]]), np.array([0]), np.array([2]), 2.0)
    probs, labels, indices, loss = merge_evaluations([first, second])
    assert indices.tolist() == [0, 2, 4] and labels.tolist() == [1, 0, 0]
    assert probs.tolist() == [[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]]
    assert loss == pytest.approx((0.5 * 2 + 2.0 * 1) / 3)  # weighted by the images of each share


def test_batch_size_must_divide_among_the_processes(tmp_path, tiny_text_encoder, monkeypatch, capsys):
    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    args = base_args(data, tiny_text_encoder) + ["--output-dir", str(tmp_path / "run"),
                                                  "--log-file", str(tmp_path / "l.log")]
    assert train_clip.main(args) == 2
    err = capsys.readouterr().err
    assert "--batch-size 4 is the global batch" in err and "multiple of 3" in err
    assert not (tmp_path / "run").exists()


def test_each_process_loads_a_disjoint_share_of_the_same_weighted_epoch():
    from data.folds import Fold
    from tests.data.test_sampling import fake_run
    from training.config import TrainConfig
    from training.fold import make_loaders

    labels = [0] * 12 + [1] * 4  # imbalanced: the weighted sampler repeats class 1
    fold = Fold(1, train_idx=list(range(10)) + [12, 13, 14], val_idx=[10, 11, 15])
    cfg = TrainConfig(data_dir="unused", use_weighted_sampling=True, batch_size=4, num_workers=0, img_size=16,
                      augmentation="standard")

    def batches(processes: Distributed) -> tuple[list, list]:
        run = fake_run(labels, cfg)
        run.processes = processes
        train_loader, val_loader, _, sampler = make_loaders(run, fold, torch.Generator().manual_seed(7))
        sampler.set_epoch(3)
        train = [(indices.tolist(), images) for images, _, indices in train_loader]
        return train, [i for _, _, batch in val_loader for i in batch.tolist()]

    one, one_val = batches(Distributed())
    shares = [batches(Distributed(rank, 2, rank)) for rank in (0, 1)]
    assert len(one) == len(shares[0][0]) == len(shares[1][0]) == 3  # 13 images, full batches of 4
    for step, (indices, images) in enumerate(one):
        first, second = shares[0][0][step], shares[1][0][step]
        # The union of the step's shares is the one-process batch, images (augmentation) included.
        assert first[0] == indices[0::2] and second[0] == indices[1::2]
        torch.testing.assert_close(torch.cat([first[1], second[1]]), images[[0, 2, 1, 3]], rtol=0, atol=0)
    assert sorted(shares[0][1] + shares[1][1]) == one_val and not set(shares[0][1]) & set(shares[1][1])
