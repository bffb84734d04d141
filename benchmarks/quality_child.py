"""The child process of bench_quality.py: every training of one data set, in one process of the commit under test.

    python benchmarks/quality_child.py CODE_DIR RUNS_JSON TIMES_JSON

``RUNS_JSON`` holds a list of ``train_clip.py`` argument lists; ``CODE_DIR/train_clip.py`` is run
with each, one after the other, as the program it is (``runpy``, as ``__main__``), so that the
interpreter start, the imports (~8 CPU-s) and the file cache of the text tower are paid once per
data set, not once per seed. Every ``main`` seeds everything itself (model, sampler, augmentation, folds), so a run
gives the numbers it gives in a process of its own. ``TIMES_JSON`` gets the CPU and wall seconds
of each run, and of the whole process so far. Imports nothing of this repository: only ``CODE_DIR``'s modules may be found.
"""
from __future__ import annotations

import json
import os
import resource
import runpy
import sys
import time
from pathlib import Path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_trainer(script: Path, argv: list[str]) -> int:
    """``python train_clip.py *argv`` in this process; its exit status."""
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as finished:  # the script ends with sys.exit(main())
        code = finished.code
        return 0 if code is None else code if isinstance(code, int) else 1
    return 0


def main() -> int:
    code_dir, runs_file, times_file = (Path(arg) for arg in sys.argv[1:4])
    os.chdir(code_dir)
    sys.path[0] = str(code_dir)  # instead of this script's folder, whose modules are not the commit's
    times = []
    for argv in json.loads(runs_file.read_text(encoding="utf-8")):
        cpu, wall = cpu_seconds(), time.perf_counter()
        status = run_trainer(code_dir / "train_clip.py", argv)
        if status != 0:
            return status
        times.append({"cpu_s": round(cpu_seconds() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1)})
        times_file.write_text(json.dumps({"runs": times, "process_cpu_s": round(cpu_seconds(), 1)}),
                              encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
