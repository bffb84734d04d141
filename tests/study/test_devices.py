"""JOBS_PER_GPU: read and checked as a runner setting, K jobs per GPU slot (not on a CPU-only machine),
shown in the plan and the dry run, and refused for an array task. GPUS_PER_JOB's groups are tested
in tests/study/test_array.py."""
from __future__ import annotations

import io
import re

import pytest

import study.devices
from study.__main__ import main
from study.devices import find_devices
from study.settings import read_settings
from utils.errors import ConfigError

STUDY = {"IMAGE_ENCODERS": "resnet18 resnet34 resnet50", "TEXT_ENCODERS": "clip:ViT-B/32"}


def settings_of(block: list[str] | None = None, **environ: str):
    return read_settings(block or [], {**STUDY, **environ})


def test_jobs_per_gpu_is_a_setting_of_the_block_and_of_the_environment() -> None:
    assert settings_of().jobs_per_gpu == 1
    assert settings_of(["JOBS_PER_GPU=4"]).jobs_per_gpu == 4
    assert settings_of(["JOBS_PER_GPU=4"], JOBS_PER_GPU="2").jobs_per_gpu == 2  # the environment wins


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_jobs_per_gpu_is_one_line_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"JOBS_PER_GPU must be a whole number of jobs, 1 or more, "
                                                    f"got '{value}'")):
        settings_of(JOBS_PER_GPU=value)


def test_k_jobs_share_each_gpu_slot_but_the_cpu_runs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 2)
    devices = find_devices(settings_of(GPUS="0 1", JOBS_PER_GPU="3"))
    assert [s.tag for s in devices.slots] == ["gpu0", "gpu1"] and devices.jobs_per_slot == 3
    assert "3 jobs (JOBS_PER_GPU) per GPU at a time" in devices.description
    grouped = find_devices(settings_of(GPUS="0 1", GPUS_PER_JOB="2", JOBS_PER_GPU="2"))
    assert [s.tag for s in grouped.slots] == ["gpu0+1"] and grouped.jobs_per_slot == 2
    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 0)
    cpu = find_devices(settings_of(GPUS="0 1", JOBS_PER_GPU="3"))
    assert [s.tag for s in cpu.slots] == ["cpu"] and cpu.jobs_per_slot == 1


def test_the_dry_run_shows_the_first_round_spread_over_the_slots(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study.devices, "cuda_device_count", lambda: 0)
    (tmp_path / "data").mkdir()
    out = io.StringIO()
    environ = {**STUDY, "GPUS": "0 1", "JOBS_PER_GPU": "2", "DRIVER_FORCE_CPU": "1", "DATA_DIR": str(tmp_path / "data"),
               "OUTPUT_ROOT": str(tmp_path / "runs"), "LOG_DIR": str(tmp_path / "logs")}
    assert main(["--dry-run"], environ, out) == 0
    text = out.getvalue()
    assert "2 jobs (JOBS_PER_GPU) per GPU slot at a time: gpu0 gpu1" in text
    assert re.findall(r"_(gpu\d)_\d{8}_\d{6}\.log", text) == ["gpu0", "gpu1", "gpu0"]


@pytest.mark.parametrize("mode", [["--count-jobs"], ["--list-jobs"], ["--job-index", "0"]])
def test_an_array_refuses_jobs_per_gpu(mode: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(mode, {**STUDY, "JOBS_PER_GPU": "4"}, io.StringIO()) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: JOBS_PER_GPU=4 is for a study on one machine")
    assert main(["--count-jobs"], {**STUDY, "JOBS_PER_GPU": "1"}, io.StringIO()) == 0
