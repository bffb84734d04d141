"""run_train_clip.sh: the real script, real trainer, tiny data, on the CPU.

One study runs once for the module (three combinations on two GPU slots, one of them made to
fail); the tests read what it left. Planning is checked with --dry-run, which runs nothing.
"""
from __future__ import annotations

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

from tests.helpers import make_image_tree

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_train_clip.sh"
OUTPUT_ROOT = "runs 结果"
GOOD = ["starnet_s050_hf_tiny_bert", "starnet_s050_scratch_hf_tiny_bert"]
BAD = "no_such_net_hf_tiny_bert"
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
    """Three combinations on slots gpu0/gpu1: two train, one names an encoder that does not exist."""
    cwd = make_study_dir(tmp_path_factory.mktemp("driver"), tiny_text_encoder)
    result = run_driver(cwd, IMAGE_ENCODERS="starnet_s050 no_such_net starnet_s050:scratch")
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
    assert len(failed) == 1 and "unknown image encoder 'no_such_net'" in failed[0]
    log = re.search(rf"^  {BAD}  \(exit 2\)  log: (.+)$", result.stdout, re.M)
    assert log, result.stdout
    assert "unknown image encoder" in (cwd / log[1]).read_text(encoding="utf-8")
    assert "2 finished, 0 skipped (already finished), 1 failed" in result.stdout


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
# Planning (--dry-run: nothing is trained)
# ---------------------------------------------------------------------------------------------
def write_summary(run_dir: Path) -> None:
    metrics = {"accuracy": 0.9, "balanced_accuracy": 0.9, "macro_f1": 0.9, "roc_auc": 0.9}
    run_dir.mkdir(parents=True)
    (run_dir / "cv_summary.json").write_text(json.dumps({
        "n_splits": 2, "folds": [{"fold": 1}, {"fold": 2}], "mean": metrics, "std": metrics,
        "wall_time_s": 1.0}), encoding="utf-8")


def test_config_entries_take_precedence_over_settings(tmp_path: Path) -> None:
    entries = [
        {"image_encoder_name": "resnet18", "text_encoder_name": "clip:ViT-B/32", "epochs": 7,
         "use_amp": True, "data_dir": "other data"},
        {"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32", "learning_rate": 1e-3},
        {"image_encoder": "resnet50:pretrained", "text_encoder": "bert-base-chinese", "use_cv": False},
    ]
    (tmp_path / "study.json").write_text(json.dumps(entries), encoding="utf-8")
    (tmp_path / "data").mkdir()
    result = run_driver(tmp_path, "--dry-run", USE_MULTI_CONFIG="true", CONFIG_FILE="study.json",
                        DATA_DIR="data", OUTPUT_ROOT="runs", EPOCHS="3", USE_AMP="false",
                        EXTRA_ARGS="--text-template 'an X-ray of {class_name}'")
    assert result.returncode == 0, result.stderr
    first, second, third = dry_run_commands(result.stdout)
    assert [flag(c, "--config-index") for c in (first, second, third)] == ["0", "1", "2"]
    assert all(flag(c, "--config") == "study.json" for c in (first, second, third))
    # entries sharing an encoder pair get a folder each
    assert [flag(c, "--output-dir") for c in (first, second, third)] == [
        "runs/resnet18_clip_ViT-B_32_cfg0", "runs/resnet18_clip_ViT-B_32_cfg1",
        "runs/resnet50_pretrained_bert-base-chinese"]
    # a setting only fills in what the entry leaves out
    assert flag(first, "--epochs") is None and flag(second, "--epochs") == "3"
    assert "--no-amp" not in first and "--no-amp" in second
    assert flag(first, "--data-dir") is None and flag(second, "--data-dir") == "data"
    assert "--use-cv" in second and "--use-cv" not in third
    assert flag(second, "--learning-rate") is None
    assert all(c[-2:] == ["--text-template", "an X-ray of {class_name}"] for c in (first, second, third))
    assert all(flag(c, "--gpu-id") is None for c in (first, second, third))  # CPU: no GPU to pick


def test_run_folders_use_the_trainers_path_safe_names(tmp_path: Path) -> None:
    from training.config import run_name

    (tmp_path / "data").mkdir()
    images, texts = ["resnet18:pretrained", "vit_b/16.augreg"], ["clip:ViT-B/32", "hf:org/股骨柄-v1.0"]
    result = run_driver(tmp_path, "--dry-run", DATA_DIR="data", OUTPUT_ROOT="runs",
                        IMAGE_ENCODERS=" ".join(images), TEXT_ENCODERS=" ".join(texts))
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    assert [flag(c, "--output-dir") for c in commands] == [f"runs/{run_name(i, t)}" for i in images for t in texts]
    for command in commands:
        log = Path(flag(command, "--log-file"))
        assert log.parent == Path("logs/clip_training") and LOG_NAME.match(log.name)


def test_finished_and_interrupted_runs(tmp_path: Path) -> None:
    from training.config import config_fields

    (tmp_path / "data").mkdir()
    write_summary(tmp_path / "runs" / "resnet18_clip_ViT-B_32")
    interrupted = tmp_path / "runs" / "resnet34_clip_ViT-B_32"
    (interrupted / "fold_1").mkdir(parents=True)
    (interrupted / "config.json").write_text("{}", encoding="utf-8")
    settings = dict(DATA_DIR="data", OUTPUT_ROOT="runs", IMAGE_ENCODERS="resnet18 resnet34 resnet50",
                    TEXT_ENCODERS="clip:ViT-B/32")
    result = run_driver(tmp_path, "--dry-run", **settings)
    assert result.returncode == 0, result.stderr
    assert "1. resnet18_clip_ViT-B_32: skip: finished" in result.stdout
    resumed, fresh = dry_run_commands(result.stdout)
    expected = "--resume" if any(f.name == "resume" for f in config_fields()) else "--overwrite"
    assert expected in resumed and "--overwrite" not in fresh and "--resume" not in fresh

    forced = run_driver(tmp_path, "--dry-run", FORCE="1", **settings)
    commands = dry_run_commands(forced.stdout)
    assert len(commands) == 3
    assert ["--overwrite" in c for c in commands] == [True, True, False]


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


@pytest.mark.parametrize("settings, message", [
    ({"EPOCHS": "ten"}, "EPOCHS must be a whole number of at least 1, got 'ten'"),
    ({"GPUS": ""}, "GPUS is empty"),
    ({"GPUS": "0 x"}, "GPUS: 'x' is not a GPU index"),
    ({"USE_CV": "maybe"}, "USE_CV must be true or false, got 'maybe'"),
    ({"DATA_DIR": "missing"}, "DATA_DIR not found: missing"),
    ({"USE_MULTI_CONFIG": "true", "CONFIG_FILE": "none.json"}, "CONFIG_FILE not found: none.json"),
    ({"LEADERBOARD_METRIC": "balanced_acc"}, "did you mean 'balanced_accuracy'"),
    ({"IMAGE_ENCODERS": "starnet_s050 starnet_s050"}, "would share the run folder 'starnet_s050_hf_tiny_bert'"),
    ({"EXTRA_ARGS": "--text-template 'unbalanced"}, "EXTRA_ARGS: cannot split"),
])
def test_bad_settings_stop_before_any_job(tmp_path: Path, settings: dict, message: str) -> None:
    (tmp_path / "数据 集").mkdir()
    result = run_driver(tmp_path, **{"IMAGE_ENCODERS": "starnet_s050", **settings})
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / OUTPUT_ROOT).exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("content, message", [
    ('[{"image_encoder": "resnet18"}]', "entry 0 names no text encoder (key 'text_encoder' or 'text_encoder_name')"),
    ('[{"image_encoder": "resnet18",}]', "is not valid JSON: Expecting property name"),
    ("[]", "must hold an object or a non-empty list of objects"),
])
def test_bad_config_file_stops_before_any_job(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "study.json").write_text(content, encoding="utf-8")
    result = run_driver(tmp_path, USE_MULTI_CONFIG="true", CONFIG_FILE="study.json")
    assert result.returncode == 2 and "CONFIG_FILE study.json" in result.stderr and message in result.stderr, \
        result.stderr
    assert not (tmp_path / "logs").exists()


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    result = run_driver(tmp_path, "--epochs", "5")
    assert result.returncode == 2 and "unknown option '--epochs'" in result.stderr


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
