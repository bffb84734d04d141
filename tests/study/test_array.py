"""A study on a cluster: the README's sbatch scripts run under a stand-in ``sbatch``, array tasks and
study runners started together over one study, and the GPU groups of GPUS_PER_JOB.

There is no SLURM here: the stand-in runs an array's tasks as concurrent processes (with the
environment SLURM gives them) and a dependent ``--wrap`` job after them. Real trainer, tiny data, on
the CPU.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.array import EXIT_HELD
from study.devices import find_devices, job_command, task_devices
from study.plan import plan_jobs
from study.scheduler import Scheduler, Slot, Task
from study.settings import read_settings
from tests.conftest import ROOT
from tests.doc_commands import bash_blocks
from tests.helpers import make_image_tree
from tests.utils.test_run_lock import start_holder, wait_until_held
from utils.errors import ConfigError

SCRIPT = ROOT / "run_train_clip.sh"
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNS = ["starnet_s050_hf_tiny_a", "starnet_s050_hf_tiny_b", "starnet_s050_hf_tiny_c"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_SBATCH = r'''
import os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SBATCH_RECORD"], "a") as record:
    record.write(" ".join(args) + "\n")
options = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
if "array" in options:
    first, last = map(int, options["array"].split("-"))
    env = dict(os.environ, SLURM_SUBMIT_DIR=os.getcwd(), SLURM_ARRAY_JOB_ID="4242")
    tasks = []
    for index in range(first, last + 1):
        out = open(f"task_{index}.out", "w")
        tasks.append((index, subprocess.Popen(["bash", args[-1]], stdout=out, stderr=subprocess.STDOUT,
                                              env=dict(env, SLURM_ARRAY_TASK_ID=str(index)))))
    with open(os.environ["FAKE_SBATCH_RECORD"], "a") as record:
        for index, task in tasks:
            record.write(f"task {index} exit {task.wait()}\n")
    print("4242;cluster")
else:
    with open("wrap.out", "w") as out:
        code = subprocess.call(["bash", "-c", args[args.index("--wrap") + 1]], stdout=out, stderr=subprocess.STDOUT)
    with open(os.environ["FAKE_SBATCH_RECORD"], "a") as record:
        record.write(f"wrap exit {code}\n")
    print("4243")
'''


def readme_script(first_line: str) -> str:
    """The README's ```bash block that starts with ``first_line``."""
    return next(block for block in bash_blocks(README) if block.startswith(first_line))


def study_env(cwd: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), DRIVER_FORCE_CPU="1", DRIVER_POLL_SECONDS="0.2",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", DATA_DIR="data", OUTPUT_ROOT="runs",
               IMAGE_ENCODERS="starnet_s050", TEXT_ENCODERS="hf:tiny_a hf:tiny_b hf:tiny_c", EPOCHS="1",
               N_SPLITS="2", IMG_SIZE="16", BATCH_SIZE="2", NUM_WORKERS="0",
               PATH=f"{cwd / 'bin'}{os.pathsep}{os.environ['PATH']}", FAKE_SBATCH_RECORD=str(cwd / "sbatch.record"))
    env.update(settings)
    return env


@pytest.fixture
def study_dir(tmp_path: Path, tiny_text_encoder: Path) -> Path:
    """A project folder: the driver script, data, three names for the tiny text encoder, a fake sbatch."""
    cwd = tmp_path / "project"
    make_image_tree(cwd / "data", {"a": 4, "b": 4}, size=16)
    for name in ("tiny_a", "tiny_b", "tiny_c"):
        (cwd / name).symlink_to(tiny_text_encoder, target_is_directory=True)
    (cwd / "run_train_clip.sh").symlink_to(SCRIPT)
    (cwd / "bin").mkdir()
    sbatch = cwd / "bin" / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\n{FAKE_SBATCH}", encoding="utf-8")
    sbatch.chmod(0o755)
    return cwd


def study(cwd: Path, *args: str, timeout: float = 120, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "run_train_clip.sh", *args], cwd=cwd, env=study_env(cwd, **settings),
                          capture_output=True, text=True, timeout=timeout)


def assert_each_run_trained_once(cwd: Path) -> None:
    for run in RUNS:
        segments = json.loads((cwd / "runs" / run / "run_time.json").read_text())["segments"]
        assert len(segments) == 1, (run, segments)  # a second training (or a resume) adds a segment
        assert (cwd / "runs" / run / "cv_summary.json").is_file()


def leaderboard_runs(cwd: Path) -> list[str]:
    with (cwd / "runs" / "leaderboard.csv").open(encoding="utf-8") as handle:
        return sorted(row["run"] for row in csv.DictReader(handle))


def kill_holder_of(folder: Path) -> int:
    """A holder killed with SIGKILL: its record stays in the lock file; returns its pid."""
    holder = start_holder(folder)
    wait_until_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    return holder.pid


def test_the_readme_sbatch_scripts_run_each_job_once_beside_a_driver_started_by_mistake(study_dir: Path) -> None:
    """The array's tasks and a study runner started at the same moment over one study, one of whose
    folders a killed training left locked: each job trains exactly once."""
    study_script = readme_script("#!/bin/bash\n#SBATCH --job-name=clip_study")  # not the one-training sbatch
    (study_dir / "study.sbatch").write_text(study_script, encoding="utf-8")
    (study_dir / "submit_study.sh").write_text(readme_script("#!/bin/bash\n# Usage: bash submit_study.sh"),
                                               encoding="utf-8")
    dead = kill_holder_of(study_dir / "runs" / RUNS[1])
    driver = subprocess.Popen(["bash", "run_train_clip.sh"], cwd=study_dir, env=study_env(study_dir, GPUS="0"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(["bash", "submit_study.sh"], cwd=study_dir, capture_output=True, text=True,
                            timeout=300, env=study_env(study_dir))
    driver_output = driver.communicate(timeout=300)[0]
    record = (study_dir / "sbatch.record").read_text()
    task_outputs = "".join(p.read_text() for p in sorted(study_dir.glob("task_*.out")))
    everything = record + task_outputs + driver_output
    assert result.returncode == 0, result.stderr + everything
    assert "study of 3 job(s): array job 4242" in result.stdout
    assert "--array=0-2 study.sbatch" in record and "--dependency=afterany:4242 " in record
    exits = re.findall(r"^task (\d) exit (\d+)$", record, re.M)
    assert sorted(index for index, _ in exits) == ["0", "1", "2"]
    # A task trained its job, or found it held (75) or finished (0) by the driver.
    assert all(code in ("0", str(EXIT_HELD)) for _, code in exits), everything
    assert driver.returncode in (0, 1), driver_output  # 1: it found a job held and says so
    trained = re.findall(r"\] done   (\S+) on", task_outputs + driver_output)
    assert sorted(trained) == RUNS, everything  # each job trained by exactly one of them
    assert_each_run_trained_once(study_dir)
    logs = "".join(p.read_text(encoding="utf-8") for p in (study_dir / "logs" / "clip_training").glob(f"{RUNS[1]}_*"))
    assert f"Taking over {Path('runs') / RUNS[1]}: its holder, process {dead}" in logs
    assert "wrap exit 0" in record and leaderboard_runs(study_dir) == RUNS
    board = subprocess.run([sys.executable, "-m", "reporting.leaderboard", "runs"], cwd=study_dir,
                           env=study_env(study_dir), capture_output=True, text=True, timeout=60)
    assert board.returncode == 0 and all(run in board.stdout for run in RUNS), board.stderr


FAKE_TRAINER = r'''
import json, sys, time
from pathlib import Path
from utils.run_dir import RunDir
folder = Path(sys.argv[1])
try:
    with RunDir(folder).lock():
        if RunDir(folder).holds_results():  # as train_clip.py checks, once it holds the folder
            raise RuntimeError(f"{folder} already holds results")
        with open(folder.parent / "trained.txt", "a") as record:
            record.write(folder.name + "\n")
        time.sleep(0.2)
        (folder / "fold_1").mkdir()
        (folder / "fold_1" / "result.json").write_text("{}")
        (folder / "folds.json").write_text(json.dumps({"folds": [{"fold": 1}]}))
        (folder / "cv_summary.json").write_text("{}")
except Exception as exc:
    print(f"2026-01-01 00:00:00 ERROR {exc}")
    sys.exit(2)
'''

RUNNER = r'''
import json, sys, time
from pathlib import Path
from study.scheduler import Scheduler, Slot, Task
trainer, root, start_at = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
names = [f"job{i}" for i in range(8)]
tasks = [Task(name, "run", root / name, lambda slot, log, name=name: [sys.executable, trainer, str(root / name)])
         for name in names]
time.sleep(max(0.0, start_at - time.time()))
outcome = Scheduler([Slot("gpu0"), Slot("gpu1")], root.parent / "logs", sys.stderr, poll_seconds=0.02).run(tasks)
print(json.dumps({"finished": outcome.finished, "skipped": outcome.skipped,
                  "refused": [f.name for f in outcome.failed if f.status.startswith("refused: ")],
                  "failed": [f.name for f in outcome.failed if not f.status.startswith("refused: ")]}))
'''


def test_two_study_runners_started_together_run_each_job_once(tmp_path: Path) -> None:
    """Two schedulers (what two drivers run) over one 8-job study, with a lock-taking fake trainer."""
    trainer = tmp_path / "trainer.py"
    trainer.write_text(FAKE_TRAINER, encoding="utf-8")
    (tmp_path / "runs").mkdir()
    (tmp_path / "logs").mkdir()
    start_at = time.time() + 1.0
    runners = [subprocess.Popen([sys.executable, "-c", RUNNER, str(trainer), str(tmp_path / "runs"), str(start_at)],
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(runner.communicate(timeout=120)[0]) for runner in runners]
    names = [f"job{i}" for i in range(8)]
    trained = (tmp_path / "runs" / "trained.txt").read_text().split()
    assert sorted(trained) == names, results  # each job's training ran once
    assert sorted(results[0]["finished"] + results[1]["finished"]) == names, results
    assert not results[0]["failed"] and not results[1]["failed"], results
    for result, other in (results, results[::-1]):  # what one did not run, the other finished
        assert set(result["skipped"] + result["refused"]) <= set(other["finished"]), results


def test_job_list_count_index_and_a_held_folder(study_dir: Path) -> None:
    holder = start_holder(study_dir / "runs" / RUNS[0])
    try:
        wait_until_held(holder)
        listed = study(study_dir, "--list-jobs")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert re.match(rf"0\trunning \(process {holder.pid} on host .+\)\truns/{RUNS[0]}\t", lines[0])
        assert re.match(rf"2\tnew\truns/{RUNS[2]}\tCUDA_VISIBLE_DEVICES='' \S+ \S+train_clip.py ", lines[2])
        assert len(lines) == 3  # job lines only: the count is on stderr
        assert listed.stderr.startswith("3 job(s), indices 0..2: sbatch --array=0-2")
        assert study(study_dir, "--count-jobs").stdout == "3\n"
        held = study(study_dir, "--job-index", "0")
        assert held.returncode == EXIT_HELD, held.stdout + held.stderr
        assert f"is in use by process {holder.pid} on host" in held.stdout
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    wrong = study(study_dir, "--job-index", "3")
    assert wrong.returncode == 2 and "--job-index 3: the study has 3 job(s), indices 0..2" in wrong.stderr
    assert "choose one" in study(study_dir, "--job-index", "1", "--list-jobs").stderr


# ---------------------------------------------------------------------------------------------
# GPUS_PER_JOB
# ---------------------------------------------------------------------------------------------
def settings_of(**environ: str):
    return read_settings([], {"IMAGE_ENCODERS": "resnet18", "TEXT_ENCODERS": "clip:ViT-B/32", **environ})


def test_gpus_per_job_groups_the_gpus_into_torchrun_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    import study.devices

    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 4)
    settings = settings_of(GPUS="0 1 2 3", GPUS_PER_JOB="2")
    slots = find_devices(settings, {}).slots
    assert [(s.tag, s.processes, s.environment()) for s in slots] == [
        ("gpu0+1", 2, {"CUDA_VISIBLE_DEVICES": "0,1"}), ("gpu2+3", 2, {"CUDA_VISIBLE_DEVICES": "2,3"})]
    command = job_command(plan_jobs(settings)[0], settings, slots[1], Path("j.log"))
    assert command[:10] == [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend", "c10d",
                            "--rdzv-endpoint", "localhost:0", "--nproc-per-node", "2", str(ROOT / "train_clip.py")]
    assert "--gpu-id" not in command  # each process takes its local rank's GPU of the group
    single = settings_of(GPUS="0 3")
    plain = job_command(plan_jobs(single)[0], single, find_devices(single).slots[1], Path("j.log"))
    assert plain[:2] == [sys.executable, str(ROOT / "train_clip.py")] and plain[-2:] == ["--gpu-id", "3"]


@pytest.mark.parametrize("runner, seen", [
    ({}, ["0,1", "3,2"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, ["0,1", "3,2"]),
    ({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, ["4,5", "7,6"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb,MIG-cc,GPU-dd"}, ["GPU-aa,GPU-bb", "GPU-dd,MIG-cc"]),
])
def test_a_group_sees_the_runners_own_gpus_at_its_indices(monkeypatch: pytest.MonkeyPatch, runner: dict,
                                                          seen: list[str]) -> None:
    """GPUS are indices into the GPUs the runner sees: with CUDA_VISIBLE_DEVICES=4,5,6,7, GPU 0 is 4."""
    import study.devices

    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 4)
    slots = find_devices(settings_of(GPUS="0 1 3 2", GPUS_PER_JOB="2"), runner).slots
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots] == seen
    assert [s.tag for s in slots] == ["gpu0+1", "gpu3+2"]  # the tag stays the indices


@pytest.mark.parametrize("environ, message", [
    ({"GPUS": "0 1 2", "GPUS_PER_JOB": "2"}, "GPUS lists 3 GPU(s), which GPUS_PER_JOB=2 does not divide"),
    ({"GPUS": "0 0", "GPUS_PER_JOB": "2"}, "the job on GPUs 0 0 names a GPU twice"),
    ({"GPUS_PER_JOB": "0"}, "GPUS_PER_JOB must be a whole number of GPUs, 1 or more, got '0'"),
])
def test_bad_gpu_groups_are_one_line(monkeypatch: pytest.MonkeyPatch, environ: dict, message: str) -> None:
    import study.devices

    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 4)
    with pytest.raises(ConfigError, match=re.escape(message)):
        find_devices(settings_of(**environ))


def test_an_array_task_uses_the_gpus_visible_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import study.devices

    settings = settings_of(GPUS="5 6 7", GPUS_PER_JOB="3")  # not used by a task
    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 2)
    [slot] = task_devices(settings, {"CUDA_VISIBLE_DEVICES": "4,7"}).slots
    assert (slot.tag, slot.processes, slot.environment()) == ("gpu4+7", 2, {})  # inherits SLURM's choice
    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 1)
    [slot] = task_devices(settings, {"CUDA_VISIBLE_DEVICES": "7"}).slots
    assert (slot.gpu, slot.processes) == (0, 1)
    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 0)
    assert task_devices(settings, {}).slots[0].tag == "cpu"


def test_a_group_slots_jobs_see_only_its_gpus(tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"
    probe = [sys.executable, "-c", f"import os; open({str(seen)!r}, 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"]
    task = Task("probe", "run", tmp_path / "runs" / "probe", lambda slot, log: probe)
    (tmp_path / "logs").mkdir()
    outcome = Scheduler([Slot("gpu2+3", None, processes=2, visible="2,3")], tmp_path / "logs", io.StringIO(),
                        poll_seconds=0.05).run([task])
    assert outcome.finished == ["probe"] and seen.read_text() == "2,3"
