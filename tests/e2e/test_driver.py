"""run_train_clip.sh: the real script, real trainer, tiny data, on the CPU.

One study runs once for the module (three combinations on two GPU slots, one of them made to
fail); the tests read what it left. Checks and plans are run with --dry-run, which trains nothing.
The runner's parts are unit-tested in tests/study/test_plan.py and tests/study/test_scheduler.py.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import make_image_tree

SCRIPT = ROOT / "run_train_clip.sh"
OUTPUT_ROOT = "runs 结果"
GOOD = ["starnet_s050_hf_tiny_bert", "starnet_s050_scratch_hf_tiny_bert"]
BAD = "starnet_s1_pretrained_hf_tiny_bert"  # checks pass; offline, its weights cannot be had
LOG_NAME = re.compile(r"^(?P<run>.+)_gpu(?P<gpu>[01])_\d{8}_\d{6}\.log$")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def driver_env(**settings: str) -> dict[str, str]:
    """The environment of a driver run: forced-CPU GPU slots 0 and 1, tiny everything."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "GPUS", "CUDA_VISIBLE_DEVICES")}
    env.update(PYTHON=sys.executable, DRIVER_FORCE_CPU="1", DRIVER_POLL_SECONDS="0.2", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1",  # two jobs share two cores
               GPUS="0 1", DATA_DIR="数据 集", OUTPUT_ROOT=OUTPUT_ROOT, TEXT_ENCODERS="hf:tiny_bert",
               EPOCHS="1", N_SPLITS="2", IMG_SIZE="32", BATCH_SIZE="4", NUM_WORKERS="0")
    env.update(settings)
    return env


def run_driver(cwd: Path, *args: str, timeout: float = 300, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=driver_env(**settings),
                          capture_output=True, text=True, timeout=timeout)


def make_study_dir(base: Path, tiny_text_encoder: Path) -> Path:
    cwd = base / "训练 study"
    make_image_tree(cwd / "数据 集", {"cat_a": 6, "股骨柄B": 6})
    (cwd / "tiny_bert").symlink_to(tiny_text_encoder, target_is_directory=True)
    return cwd


def dry_run_commands(stdout: str) -> list[list[str]]:
    """train_clip.py argument lists printed by --dry-run (environment prefix and python dropped)."""
    lines = stdout.split("Commands (dry run", 1)[1].splitlines()[1:]
    commands = []
    for line in filter(None, lines):
        words = shlex.split(line)
        start = next(i for i, w in enumerate(words) if w.endswith("train_clip.py"))
        commands.append(words[start + 1:])
    return commands


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path):
    """Three combinations on slots gpu0/gpu1: two train, one fails when it looks for its weights."""
    cwd = make_study_dir(tmp_path_factory.mktemp("driver"), tiny_text_encoder)
    # An empty hub cache, so that starnet_s1's weights are missing on every machine.
    result = run_driver(cwd, IMAGE_ENCODERS="starnet_s050 starnet_s1:pretrained starnet_s050:scratch",
                        HF_HUB_CACHE=str(cwd / "empty hub cache"))
    return cwd, result


def test_jobs_share_the_gpu_slots_and_queue(study) -> None:
    cwd, result = study
    events = [line for line in result.stdout.splitlines() if line.startswith("[")]
    kinds = [line.split("] ", 1)[1].split()[0:2] for line in events]
    starts = [name for kind, name in kinds if kind == "start"]
    assert starts == ["starnet_s050_hf_tiny_bert", BAD, "starnet_s050_scratch_hf_tiny_bert"], result.stdout
    # the first two start together; the third waits for a free slot
    assert [kind for kind, _ in kinds][:2] == ["start", "start"]
    first_end = next(i for i, (kind, _) in enumerate(kinds) if kind in ("done", "FAILED"))
    assert first_end < [name for _, name in kinds].index("starnet_s050_scratch_hf_tiny_bert")
    assert {line.split(" on ")[1].split()[0] for line in events[:2]} == {"gpu0", "gpu1"}


def test_log_files_are_named_per_job_and_slot(study) -> None:
    cwd, result = study
    logs = sorted((cwd / "logs" / "clip_training").iterdir())
    # console output repeats the log here (no traceback, no warning), so none is kept
    assert [p.suffix for p in logs] == [".log"] * 3, [p.name for p in logs]
    matches = [LOG_NAME.match(p.name) for p in logs]
    assert all(matches), [p.name for p in logs]
    assert sorted(m["run"] for m in matches) == sorted(GOOD + [BAD])
    text = (cwd / "logs" / "clip_training" / next(p.name for p in logs if p.name.startswith(GOOD[0]))) \
        .read_text(encoding="utf-8")
    epoch_lines = [line for line in text.splitlines() if re.search(r"fold \d epoch +1/1", line)]
    assert len(epoch_lines) == 2  # one per fold, not repeated by the console output
    assert "\r" not in text  # no progress bars in the log


def test_leaderboard_holds_the_finished_jobs(study) -> None:
    cwd, result = study
    root = cwd / OUTPUT_ROOT
    board = (root / "leaderboard.csv").read_text(encoding="utf-8").splitlines()
    assert sorted(line.split(",")[1] for line in board[1:]) == sorted(GOOD)
    markdown = (root / "leaderboard.md").read_text(encoding="utf-8")
    assert markdown in result.stdout
    assert f"- {BAD}" in markdown  # listed as a run without results
    for name in GOOD:
        assert json.loads((root / name / "cv_summary.json").read_text(encoding="utf-8"))["n_splits"] == 2


def test_failed_job_is_named_with_its_log_and_fails_the_run(study) -> None:
    cwd, result = study
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if f"FAILED {BAD}" in line]
    assert len(failed) == 1 and "--image-encoder starnet_s1:pretrained: pretrained weights not found" in failed[0]
    log = re.search(rf"^  {BAD}  \(exit 2\)  log: (.+)$", result.stdout, re.M)
    assert log, result.stdout
    assert " ERROR --image-encoder starnet_s1:pretrained: pretrained weights not found" in \
        (cwd / log[1]).read_text(encoding="utf-8")
    assert "2 finished, 0 skipped (already finished), 1 failed" in result.stdout


def test_every_epoch_line_ends_with_the_time_left(study) -> None:
    cwd, _ = study
    log = next((cwd / "logs" / "clip_training").glob(f"{GOOD[0]}_gpu*.log")).read_text(encoding="utf-8")
    ends = [line.split("  left: ", 1)[1] for line in log.splitlines() if re.search(r"fold \d epoch +\d/1", line)]
    assert len(ends) == 4, log  # epochs 0 and 1 of two folds
    assert ends[0] == "known after the first training epoch"
    assert re.fullmatch(r"fold 0s, run \d+s", ends[1])  # one fold of one epoch after this one
    assert re.fullmatch(r"fold (\d+)s, run \1s", ends[2])  # fold 2's epoch 0: its one epoch is all that is left
    assert ends[3] == "fold 0s, run 0s"


def test_status_reads_what_the_study_left(study, tmp_path: Path) -> None:
    from study.status import job_status
    from utils.progress import Progress, read_record
    from utils.run_dir import RunDir

    cwd, _ = study
    result = run_driver(cwd, "--status", IMAGE_ENCODERS="starnet_s050 starnet_s1:pretrained starnet_s050:scratch",
                        timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [["0", GOOD[0], "done"], ["1", BAD, "failed"],
                                                     ["2", GOOD[1], "done"]], result.stdout
    failed = re.fullmatch(r"1  \S+ +failed \(exit 2\): --image-encoder starnet_s1:pretrained: pretrained weights "
                          r"not found.*; log: (.+)", lines[1])
    assert failed and (cwd / failed[1]).is_file(), lines[1]
    assert result.stderr.endswith(f"3 job(s) in {OUTPUT_ROOT}: 2 done, 0 running, 1 failed, 0 waiting\n")
    # The record the trainer wrote after its last epoch, as --status reads it.
    run = RunDir(cwd / OUTPUT_ROOT / GOOD[0])
    record = read_record(run.progress)
    assert isinstance(record, Progress), run.progress.read_text(encoding="utf-8")
    assert (record.fold_index, record.folds, record.epoch, record.epochs) == (2, 2, 1, 1)
    assert record.slot in ("gpu0", "gpu1") and record.run_left_s == 0.0
    assert Path(record.log).name.startswith(f"{GOOD[0]}_{record.slot}_")
    stopped = RunDir(tmp_path / "stopped")  # had its process died there, with no results yet
    stopped.path.mkdir()
    stopped.progress.write_bytes(run.progress.read_bytes())
    assert job_status(stopped, dt.datetime.now().astimezone(), "h").line() == \
        "waiting: interrupted after fold 2 of 2, epoch 1 of 1 (resumed when it runs again)"


def test_second_run_skips_finished_jobs(study) -> None:
    cwd, _ = study
    logs_before = set((cwd / "logs" / "clip_training").iterdir())
    result = run_driver(cwd, IMAGE_ENCODERS="starnet_s050 starnet_s050:scratch", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": skip: finished") == 2
    assert "start " not in result.stdout
    assert set((cwd / "logs" / "clip_training").iterdir()) == logs_before
    assert "0 finished, 2 skipped" in result.stdout


# ---------------------------------------------------------------------------------------------
# Checks and plans through the script (--dry-run: nothing is trained); the details of planning
# are unit-tested in tests/study/test_plan.py
# ---------------------------------------------------------------------------------------------
def assert_nothing_ran(cwd: Path) -> None:
    assert not (cwd / OUTPUT_ROOT).exists() and not (cwd / "logs").exists()


def test_weight_smooth_factor_reaches_every_job(tmp_path: Path) -> None:
    (tmp_path / "数据 集").mkdir()
    result = run_driver(tmp_path, "--dry-run", WEIGHT_SMOOTH_FACTOR="0.5", IMAGE_ENCODERS="resnet18 resnet34",
                        EXTRA_ARGS="--text-template 'an X-ray of {class_name}'")
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    assert len(commands) == 2 and all(flag(c, "--weight-smooth-factor") == "0.5" for c in commands)
    assert all(c[-2:] == ["--text-template", "an X-ray of {class_name}"] for c in commands)
    assert all(flag(c, "--data-dir") == "数据 集" and flag(c, "--gpu-id") is None for c in commands)
    assert [Path(flag(c, "--log-file")).parent for c in commands] == [Path("logs/clip_training")] * 2
    assert all(LOG_NAME.match(Path(flag(c, "--log-file")).name) for c in commands)
    assert_nothing_ran(tmp_path)


def test_a_misspelt_encoder_stops_the_dry_run_naming_it(tmp_path: Path) -> None:
    (tmp_path / "数据 集").mkdir()
    result = run_driver(tmp_path, "--dry-run", IMAGE_ENCODERS="starnet_s050 resnet9000")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: job 2 (resnet9000_hf_tiny_bert): --image-encoder: unknown image encoder "
                           "'resnet9000' (did you mean 'resnet50'?)")
    assert "Commands" not in result.stdout
    assert_nothing_ran(tmp_path)


@pytest.mark.parametrize("entry, message", [
    ({"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32", "weight_smoth_factor": 0.5},
     "entry 1: unknown key 'weight_smoth_factor' (did you mean 'weight_smooth_factor'?)"),
    ({"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32", "epochs": "100"},
     "entry 1: 'epochs' must be an integer, got '100'"),
])
def test_a_bad_config_entry_stops_before_any_job(tmp_path: Path, entry: dict, message: str) -> None:
    good = {"image_encoder_name": "resnet18", "text_encoder_name": "clip:ViT-B/32", "use_amp": True}
    (tmp_path / "study.json").write_text(json.dumps([good, entry]), encoding="utf-8")
    result = run_driver(tmp_path, USE_MULTI_CONFIG="true", CONFIG_FILE="study.json")
    assert result.returncode == 2 and f"CONFIG_FILE study.json {message}" in result.stderr, result.stderr
    assert_nothing_ran(tmp_path)


def test_the_settings_block_of_the_file(tmp_path: Path, tiny_text_encoder: Path) -> None:
    """A copy of the script with its block edited as the user's guide says: an array item with a
    space stays one item, and a misspelt setting name is refused."""
    (tmp_path / "数据 集").mkdir()
    script = tmp_path / "run_train_clip.sh"
    text = SCRIPT.read_text(encoding="utf-8")
    text = text.replace('    "clip:ViT-B/32"\n', '    "hf:tiny bert"\n    "clip:ViT-B/32"\n', 1)
    script.write_text(text.replace("EPOCHS=200", "EPOCHS=3"), encoding="utf-8")
    env = {k: v for k, v in driver_env().items() if k not in ("TEXT_ENCODERS", "EPOCHS")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(["bash", str(script), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    assert [flag(c, "--text-encoder") for c in commands] == ["hf:tiny bert", "clip:ViT-B/32"]
    assert all(flag(c, "--epochs") == "3" and flag(c, "--weight-smooth-factor") == "1.0" for c in commands)

    script.write_text(text.replace("EPOCHS=200", "EPOCS=3"), encoding="utf-8")
    result = subprocess.run(["bash", str(script), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "EPOCS in run_train_clip.sh is not a setting (did you mean 'EPOCHS'?)" in result.stderr


def test_a_run_folder_in_use_is_refused_naming_its_holder(tmp_path: Path) -> None:
    from utils.run_dir import RunDir

    (tmp_path / "数据 集").mkdir()
    with RunDir(tmp_path / OUTPUT_ROOT / "resnet18_hf_tiny_bert").lock():
        result = run_driver(tmp_path, IMAGE_ENCODERS="resnet18", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"REFUSED resnet18_hf_tiny_bert: .+ is in use by process {os.getpid()} on host ", result.stdout)
    assert "0 finished, 0 skipped (already finished), 1 failed" in result.stdout
    assert re.search(rf"^  resnet18_hf_tiny_bert  \(refused: .+ in use by process {os.getpid()} ", result.stdout, re.M)
    assert not list((tmp_path / "logs" / "clip_training").iterdir())  # it never started


def test_without_cuda_jobs_run_one_at_a_time_on_the_cpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "data").mkdir()
    env = {"DRIVER_FORCE_CPU": "", "GPUS": "0 1", "DATA_DIR": "data", "OUTPUT_ROOT": "runs",
           "IMAGE_ENCODERS": "resnet18 resnet34", "TEXT_ENCODERS": "clip:ViT-B/32"}
    result = run_driver(tmp_path, "--dry-run", **env)
    assert result.returncode == 0, result.stderr
    assert "on the CPU (CUDA is not available), one at a time" in result.stdout
    commands = dry_run_commands(result.stdout)
    assert len(commands) == 2 and all("_cpu_" in flag(c, "--log-file") for c in commands)
    assert all(flag(c, "--gpu-id") is None for c in commands)
    assert "CUDA_VISIBLE_DEVICES" not in result.stdout  # a real CPU machine: nothing is hidden


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    result = run_driver(tmp_path, "--epochs", "5")
    assert result.returncode == 2 and "unknown option '--epochs'" in result.stderr


def test_help_shows_the_settings_as_they_stand(tmp_path: Path) -> None:
    result = run_driver(tmp_path, "--help", EPOCHS="7")
    assert result.returncode == 0, result.stderr
    assert "Usage: bash run_train_clip.sh" in result.stdout
    assert "  EPOCHS=7\n" in result.stdout and "  WEIGHT_SMOOTH_FACTOR=1.0\n" in result.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("signal_number, to_group, status", [
    (signal.SIGINT, True, 130),    # Ctrl-C in a terminal: the driver's whole process group
    (signal.SIGTERM, False, 143),  # kill PID
])
def test_ctrl_c_stops_every_job(tmp_path: Path, tiny_text_encoder: Path, signal_number: int, to_group: bool,
                                status: int) -> None:
    cwd = make_study_dir(tmp_path, tiny_text_encoder)
    marker = str(cwd / OUTPUT_ROOT)

    def trainers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    env = driver_env(IMAGE_ENCODERS="resnet18 resnet34 resnet50", OUTPUT_ROOT=marker)
    # A session of its own, so that SIGINT goes to the driver's process group as Ctrl-C would.
    driver = subprocess.Popen(["bash", str(SCRIPT)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(trainers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(trainers()) == 2
        if to_group:
            os.killpg(driver.pid, signal_number)
        else:
            os.kill(driver.pid, signal_number)
        output, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == status, output
    unfinished = output.split("Left unfinished:", 1)[1]
    assert "resnet18_hf_tiny_bert  (stopped on gpu0" in unfinished
    assert "resnet34_hf_tiny_bert  (stopped on gpu1" in unfinished
    assert "resnet50_hf_tiny_bert  (not started)" in unfinished
    assert trainers() == []


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_script_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
