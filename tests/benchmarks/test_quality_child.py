"""benchmarks/quality_child.py: every run in one process of the commit's train_clip.py, stopping at a failure.

A stand-in ``train_clip.py`` (no torch: the test starts one plain interpreter) records what it was given.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_quality import CHILD

STAND_IN = '''import json, os, sys
from helper import record  # a module of the commit's folder, not of the benchmark's
def main():
    record({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:]})
    return int(sys.argv[2])
if __name__ == "__main__":
    sys.exit(main())
'''
HELPER = '''import json, pathlib
def record(entry):
    with open(pathlib.Path(__file__).with_name("calls.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\\n")
'''


def run_child(code: Path, argvs: list[list[str]]) -> tuple[int, list[dict], dict | None]:
    (code / "train_clip.py").write_text(STAND_IN)
    (code / "helper.py").write_text(HELPER)
    runs, times = code / "runs.json", code / "times.json"
    runs.write_text(json.dumps(argvs))
    status = subprocess.run([sys.executable, str(CHILD), str(code), str(runs), str(times)], cwd=code.parent).returncode
    calls = [json.loads(line) for line in (code / "calls.jsonl").read_text().splitlines()]
    return status, calls, json.loads(times.read_text()) if times.exists() else None


def test_every_run_goes_through_one_process_in_the_commits_folder(tmp_path: Path) -> None:
    status, calls, times = run_child(tmp_path, [["--seed", "0"], ["--seed", "0", "x"]])
    assert status == 0
    assert [call["argv"] for call in calls] == [["--seed", "0"], ["--seed", "0", "x"]]
    assert len({call["pid"] for call in calls}) == 1
    assert {call["cwd"] for call in calls} == {str(tmp_path)}
    assert len(times["runs"]) == 2 and times["process_cpu_s"] >= 0


def test_a_failed_run_stops_the_child_with_its_status(tmp_path: Path) -> None:
    status, calls, times = run_child(tmp_path, [["--seed", "0"], ["--seed", "3"], ["--seed", "0"]])
    assert status == 3
    assert len(calls) == 2  # the third run never started
    assert len(times["runs"]) == 1  # only the finished run has times
