"""The commands of a Markdown page (README.md, docs/zh/README.md): its ```bash blocks, made cheap for a test
(tiny encoders, one epoch, two folds) without changing what they do, and run.

A ``.venv/bin/python SCRIPT.py ...`` or ``.venv/bin/python -m MODULE ...`` line runs in this process as
``__main__`` (what the interpreter would do, without paying torch's import again for every line); every other
line (the driver, ``tail``, settings) runs in bash.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

# Appended to every train_clip.py command: argparse keeps the last value, so the page's own flags still reach
# the trainer and only the encoders, the sizes and the length change (hf:tiny is a folder beside the data).
TINY_TRAINING = ("--image-encoder starnet_s050 --text-encoder hf:tiny --epochs 1 --batch-size 4 --n-splits 2 "
                 "--img-size 16 --num-workers 0 --embed-dim 16 --bootstrap-resamples 50")
PYTHON = ".venv/bin/python"


def bash_blocks(page: str | Path) -> list[str]:
    """The ```bash blocks of a Markdown page (a path or its text), in order."""
    text = Path(page).read_text(encoding="utf-8") if isinstance(page, Path) else page
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def tiny(block: str) -> list[str]:
    """The commands of ``block`` (continued lines joined), :data:`TINY_TRAINING` after each train_clip.py one."""
    lines = block.replace("\\\n", " ").splitlines()
    return [f"{line} {TINY_TRAINING}" if "train_clip.py" in line and not line.lstrip().startswith("#") else line
            for line in lines]


def run_python(words: list[str], root: Path, cwd: Path) -> tuple[int, str]:
    """``python SCRIPT.py args`` / ``python -m MODULE args`` in this process, in ``cwd``: exit status and output."""
    out = io.StringIO()
    previous, argv = Path.cwd(), sys.argv
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            # A module the suite already imported runs again as __main__, as `python -m` would run it.
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            if words[0] == "-m":
                sys.argv = [words[1], *words[2:]]
                runpy.run_module(words[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = words
                runpy.run_path(str(root / words[0]), run_name="__main__")
        return 0, out.getvalue()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        return code, out.getvalue()
    finally:
        os.chdir(previous)
        sys.argv = argv


def run_block(block: str, root: Path, cwd: Path, env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Every command of ``block`` in order, stopping at the first that fails: its exit status and all output."""
    output, shell = [], []

    def flush() -> int:
        if not any(line.strip() and not line.lstrip().startswith("#") for line in shell):
            shell.clear()
            return 0
        result = subprocess.run(["bash", "-e", "-c", "\n".join(shell)], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=timeout)
        output.append(result.stdout + result.stderr)
        shell.clear()
        return result.returncode

    for line in tiny(block):
        words = shlex.split(line, comments=True) if line.strip() else []
        if words and words[0] == PYTHON:
            code = flush()
            if code == 0:
                code, text = run_python(words[1:], root, cwd)
                output.append(text)
            if code:
                return code, "\n".join(output)
        else:
            shell.append(line)
    return flush(), "\n".join(output)
