"""The run folder's lock (utils.run_lock): held across processes and hosts, stale locks taken over.

Holders are small Python processes that take the lock and sleep, so these tests need no torch and
take a few seconds. "Another host" is a record naming another host; "a mount whose OS lock is local
to each machine" is simulated by making the OS-lock probe see nothing.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from utils import run_lock
from utils.run_dir import LOCK_FILE, RunDir, RunLockedError


HOLDER = r'''
import sys, time
from pathlib import Path
from utils.run_dir import RunDir
folder, start_at, seconds = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))
try:
    with RunDir(folder).lock():
        print("held", flush=True)
        time.sleep(seconds)
except Exception as exc:
    print(f"refused: {exc}", flush=True)
'''


def start_holder(folder: Path, seconds: float = 600, start_at: float = 0.0, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(start_at), str(seconds)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **env), stdout=subprocess.PIPE, text=True)


def wait_until_held(holder: subprocess.Popen) -> None:
    assert holder.stdout.readline().strip() == "held"


def write_record(folder: Path, age_s: float = 0.0, **record: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    lock.write_text(json.dumps(record), encoding="utf-8")
    then = time.time() - age_s
    os.utime(lock, (then, then))


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        wait_until_held(holder)
        assert RunDir(folder).lock_holder()["pid"] == holder.pid
        with pytest.raises(RunLockedError, match=f"is in use by process {holder.pid} on host {socket.gethostname()}"):
            with RunDir(folder).lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert RunDir(folder).lock_holder() is None  # its record remains, but its process has ended
    with caplog.at_level(logging.WARNING), RunDir(folder).lock():
        assert RunDir(folder).lock_holder()["pid"] == os.getpid()
    assert f"Taking over {folder}: its holder, process {holder.pid}" in caplog.text
    assert "has ended" in caplog.text


def test_a_killed_holder_not_yet_reaped_is_taken_over(tmp_path: Path) -> None:
    # A killed torchrun's workers stay zombies until init reaps them: ended, files closed, pid still there.
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        wait_until_held(holder)
        holder.send_signal(signal.SIGKILL)
        deadline = time.time() + 30
        while open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":  # not waited for: a zombie
            assert time.time() < deadline, "the killed holder never became a zombie"
            time.sleep(0.01)
        # The leader is a zombie first; the lock is free once its renewing thread has ended too.
        while RunDir(folder).lock_holder() is not None:
            assert time.time() < deadline, "a killed holder's zombie kept its lock"
            time.sleep(0.01)
        assert open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"  # still unreaped
        with RunDir(folder).lock():
            assert RunDir(folder).lock_holder()["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_a_reused_pid_does_not_keep_a_lock(tmp_path: Path, caplog) -> None:
    # The recorded pid is alive (it is ours), but it started at another time: a new process under an old pid.
    folder = tmp_path / "run"
    write_record(folder, host=socket.gethostname(), pid=os.getpid(), started="yesterday", lease_s=600,
                 process_start=run_lock.process_start_ticks(os.getpid()) - 1)
    with caplog.at_level(logging.WARNING), RunDir(folder).lock():
        pass
    assert "its pid now belongs to another process" in caplog.text


def test_another_hosts_lock_is_kept_for_its_lease_then_taken_over(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "run"
    write_record(folder, age_s=30, host="node-17", pid=4242, started="2026-01-01T08:00:00+00:00", lease_s=600)
    with pytest.raises(RunLockedError, match=r"in use by process 4242 on host node-17 \(started 2026-01-01"):
        with RunDir(folder).lock():
            pass
    assert json.loads((folder / LOCK_FILE).read_text())["host"] == "node-17"  # the refused one changed nothing
    write_record(folder, age_s=700, host="node-17", pid=4242, started="2026-01-01T08:00:00+00:00", lease_s=600)
    with caplog.at_level(logging.WARNING), RunDir(folder).lock():
        assert json.loads((folder / LOCK_FILE).read_text())["host"] == socket.gethostname()
    assert "process 4242 on host node-17" in caplog.text and "lease of 600 s expired 100 s ago" in caplog.text
    assert (folder / LOCK_FILE).read_text() == ""  # released cleanly
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # no claim or break file left behind


@pytest.mark.skipif(sys.platform != "linux", reason="SIGSTOP and /proc")
def test_the_lease_is_renewed_while_the_holder_lives_and_lapses_when_it_hangs(tmp_path: Path, monkeypatch) -> None:
    # As seen from another host of a mount whose OS lock each machine keeps to itself: the lease alone tells.
    folder = tmp_path / "run"
    holder = start_holder(folder, **{run_lock.LEASE_VARIABLE: "1"})
    try:
        wait_until_held(holder)
        monkeypatch.setattr(run_lock, "_flock_held", lambda fd: False)
        monkeypatch.setattr(run_lock.socket, "gethostname", lambda: "another-node")
        time.sleep(2.5)  # past the lease: only renewals keep it
        assert RunDir(folder).lock_holder()["pid"] == holder.pid
        holder.send_signal(signal.SIGSTOP)  # a hung node: no more renewals
        time.sleep(2.0)
        assert RunDir(folder).lock_holder() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_of_contenders_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    for round_ in range(2):
        folder = tmp_path / f"run{round_}"
        write_record(folder, host="dead-node", pid=1, started="yesterday")  # stale: no lease, no OS lock
        start_at = time.time() + 1.5  # every contender has started by then, and tries at once
        contenders = [start_holder(folder, seconds=4, start_at=start_at) for _ in range(4)]
        outputs = [c.communicate(timeout=60)[0].strip() for c in contenders]
        winners = [c.pid for c, text in zip(contenders, outputs) if text == "held"]
        assert len(winners) == 1, outputs
        refusals = [text for text in outputs if text != "held"]
        assert all(f"is in use by process {winners[0]} " in text for text in refusals), outputs
        assert (folder / LOCK_FILE).read_text() == "" and sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]


def test_a_bad_lease_setting_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(run_lock.LEASE_VARIABLE, "ten minutes")
    with pytest.raises(run_lock.ConfigError, match="TRAIN_CLIP_LOCK_LEASE_SECONDS must be a positive number"):
        with RunDir(tmp_path / "run").lock():
            pass


def test_a_training_into_a_folder_another_is_writing_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    import train_clip
    from tests.helpers import make_image_tree

    data = make_image_tree(tmp_path / "data", {"a": 4, "b": 4}, size=16)
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        wait_until_held(holder)
        (folder / "config.json").write_text('{"written by": "the holder"}', encoding="utf-8")
        code = train_clip.main(["--data-dir", str(data), "--output-dir", str(folder), "--log-file",
                                str(tmp_path / "second.log"), "--image-encoder", "starnet_s050"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and f"is in use by process {holder.pid} on host" in errors[0], errors
    assert (folder / "config.json").read_text(encoding="utf-8") == '{"written by": "the holder"}'
