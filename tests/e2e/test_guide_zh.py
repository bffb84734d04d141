"""The Chinese user guide (docs/zh/README.md): it has the users' own guide's sections, and every command in its
```bash blocks runs, in order, in a project folder of tiny hospital-like data (class folders with patients in the
file names, a CSV manifest with a group column, DICOM files with PatientIDs), with tiny encoders in place of
the named ones (tests/doc_commands.py). The SLURM submission runs under the stand-in sbatch of
tests/test_study_cluster.py, with the README's own sbatch files."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.doc_commands import bash_blocks, run_block
from tests.helpers import make_image_tree, write_dicom
from tests.conftest import ROOT
from tests.study.test_array import FAKE_SBATCH, readme_script

GUIDE = ROOT / "docs" / "zh" / "README.md"
TEXT = GUIDE.read_text(encoding="utf-8")
SEED_SECTIONS = ["快速开始", "支持的模型", "训练参数说明", "数据准备", "训练输出", "训练日志", "常见问题", "示例命令"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_the_guide_follows_the_users_guide_and_is_linked_from_the_readme() -> None:
    sections = re.findall(r"^## (.+)$", TEXT, re.M)
    assert [s for s in sections if s in SEED_SECTIONS] == SEED_SECTIONS
    for topic in ("DICOM", "CSV", "--group-regex", "--group-by dicom", "--resume", "SLURM", "run_train_clip.sh",
                  "report.zh.md", "数字的含义", "--report-lang"):
        assert topic in TEXT, topic
    assert "docs/zh/README.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    for image in re.findall(r"!\[[^]]*]\(([^)]+)\)", TEXT):
        assert (GUIDE.parent / image).is_file(), image


def project(root: Path, tiny_text_encoder: Path) -> Path:
    """Tiny data laid out as the guide's commands expect it, beside links to the code."""
    names = ("股骨柄A", "股骨柄B")
    data = make_image_tree(root / "single_label_data", dict.fromkeys(names, 16), size=16)
    for k, path in enumerate(sorted(data.rglob("*.png"))):  # two radiographs per patient
        path.rename(path.with_name(f"P{k // 2:03d}_{path.name}"))
    rows = ["path,label,group"]
    for path in sorted(data.rglob("*.png")):
        patient = path.name.split("_")[0]
        target = root / "pacs_export" / patient / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        rows.append(f"{patient}/{path.name},{path.parent.name},{patient}")
    (root / "pacs_export" / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    for k in range(32):
        pixels = rng.integers(0, 1000, (16, 16)).astype(np.uint16)
        pixels[:, (k % 2) * 8:(k % 2) * 8 + 4] = 3000
        write_dicom(root / "dicom_by_class" / names[k % 2] / f"IM{k:04d}.dcm", pixels, patient_id=f"P{k // 4:02d}")
    make_image_tree(root / "new_images", {"x": 3}, size=16)
    json_block = next(b for b in re.findall(r"```json\n(.*?)```", TEXT, re.S) if "股骨柄A" in b)
    (root / "class_texts_hip_prosthesis.json").write_text(json.dumps(json.loads(json_block), ensure_ascii=False),
                                                          encoding="utf-8")
    for name in ("train_clip.py", "predict.py", "run_train_clip.sh", "train_clip_config.json", ".venv"):
        (root / name).symlink_to(ROOT / name)
    (root / "tiny").symlink_to(tiny_text_encoder, target_is_directory=True)
    (root / "study.sbatch").write_text(readme_script("#!/bin/bash\n#SBATCH --job-name=clip_study"), encoding="utf-8")
    (root / "submit_study.sh").write_text(readme_script("#!/bin/bash\n# Usage: bash submit_study.sh"),
                                          encoding="utf-8")
    (root / "bin").mkdir()
    (root / "bin" / "sbatch").write_text(f"#!{sys.executable}\n{FAKE_SBATCH}", encoding="utf-8")
    (root / "bin" / "sbatch").chmod(0o755)
    return root


def guide_env(root: Path) -> dict[str, str]:
    """The driver's settings for tiny jobs (the guide's own settings block edits the script, not these)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), DRIVER_FORCE_CPU="1", DRIVER_POLL_SECONDS="0.2",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", DATA_DIR="single_label_data",
               IMAGE_ENCODERS="starnet_s050", TEXT_ENCODERS="hf:tiny", EPOCHS="1", N_SPLITS="2", IMG_SIZE="16",
               BATCH_SIZE="4", NUM_WORKERS="0", EXTRA_ARGS="--embed-dim 16 --bootstrap-resamples 50",
               PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", FAKE_SBATCH_RECORD=str(root / "sbatch.record"))
    return env


def test_every_command_of_the_guide_runs(tmp_path: Path, tiny_text_encoder: Path) -> None:
    root = project(tmp_path / "project", tiny_text_encoder)
    env = guide_env(root)
    blocks = bash_blocks(GUIDE)
    assert len(blocks) >= 12
    outputs = []
    for block in blocks:
        code, output = run_block(block, ROOT, root, env)
        assert code == 0, f"{block}\n{output[-5000:]}"
        outputs.append(output)
    runs = root / "checkpoints" / "clip_models"
    for run in ("resnet18_bert-base-chinese", "from_config", "hips_by_patient", "dicom_by_patient",
                "starnet_s1_bert", "cn_clip_vit_b16", "starnet_s050_hf_tiny"):
        assert (runs / run / "cv_summary.json").is_file(), run
    assert (runs / "cn_clip_vit_b16" / "report.zh.md").is_file() and not (runs / "cn_clip_vit_b16" / "report.md").exists()
    for run in ("hips_by_patient", "dicom_by_patient", "starnet_s1_bert"):
        assert "oof_patient" in json.loads((runs / run / "cv_summary.json").read_text(encoding="utf-8")), run
    assert (runs / "leaderboard.zh.md").is_file() and (root / "preds.csv").is_file()
    assert len(list((root / "heatmaps").glob("*.png"))) == 3
    everything = "\n".join(outputs)
    assert "--resume: the run in" in everything and "is finished" in everything  # and nothing was changed
    assert "task 0 exit 0" in (root / "sbatch.record").read_text()
