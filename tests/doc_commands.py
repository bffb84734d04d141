"""The commands of a Markdown page (README.md, docs/zh/README.md): its ```bash blocks, and those blocks made
cheap for a test (tiny encoders, one epoch, two folds) without changing what they do."""
from __future__ import annotations

import re
from pathlib import Path

# Appended to every train_clip.py command: argparse keeps the last value, so the page's own flags still reach
# the trainer and only the encoders, the sizes and the length change (hf:tiny is a folder beside the data).
TINY_TRAINING = ("--image-encoder starnet_s050 --text-encoder hf:tiny --epochs 1 --batch-size 4 --n-splits 2 "
                 "--img-size 16 --num-workers 0 --embed-dim 16 --bootstrap-resamples 50")


def bash_blocks(page: str | Path) -> list[str]:
    """The ```bash blocks of a Markdown page (a path or its text), in order."""
    text = Path(page).read_text(encoding="utf-8") if isinstance(page, Path) else page
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def tiny(block: str) -> str:
    """``block`` with continued lines joined and :data:`TINY_TRAINING` after each train_clip.py command."""
    lines = block.replace("\\\n", " ").splitlines()
    return "\n".join(f"{line} {TINY_TRAINING}" if "train_clip.py" in line and not line.lstrip().startswith("#")
                     else line for line in lines) + "\n"
