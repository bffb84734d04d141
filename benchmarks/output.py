"""What every benchmark does last: write its result as JSON and say where."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.io import write_json


def write_result(out: str | Path, result: dict[str, Any]) -> None:
    """``result`` to ``out`` (its folder made if missing) with the trainer's own writer: atomic, NaN as null."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"written: {out}")
