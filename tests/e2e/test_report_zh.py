"""report.zh.md of a demo-like run and of a Chinese-class run: every heading and table header in Chinese, every
number the same as report.md's (the two are written by one code path from one table of phrases)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import train_clip
from data.demo import build_demo_dataset
from reporting.fonts import needs_cjk
from reporting.leaderboard import main as leaderboard_main
from reporting.report import main as report_main
from tests.helpers import make_image_tree


NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e-?\d+)?")
# Names that stay as they are in Chinese text (metrics, methods, file and flag names).
TECHNICAL = {"AUC", "ECE", "BBC", "CV", "ROC", "F1", "BCa", "Youden", "epoch", "AdamW", "bootstrap"}


def train(data_args: list[str], out: Path, tiny_text_encoder: Path, *extra: str) -> Path:
    argv = [*data_args, "--output-dir", str(out), "--log-file", str(out.parent / f"{out.name}.log"),
            "--image-encoder", "starnet_s050", "--text-encoder", f"hf:{tiny_text_encoder}", "--img-size", "16",
            "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--embed-dim", "16",
            "--bootstrap-resamples", "50", "--use-cv", "--n-splits", "2", *extra]
    assert train_clip.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zh_reports")
    demo = build_demo_dataset(root / "digits")
    manifest = root / "digits.csv"  # the demo's classes and images, 6 of each of 3 digits
    rows = [f"{path.relative_to(demo).as_posix()},{path.parent.name}"
            for folder in sorted(demo.iterdir())[:3] for path in sorted(folder.iterdir())[:6]]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    manifest = manifest.rename(demo / "subset.csv")
    hips = make_image_tree(root / "hips", {"股骨柄A": 16, "股骨柄B": 16}, size=16)
    for k, path in enumerate(sorted(hips.rglob("*.png"))):  # two images per patient
        path.rename(path.with_name(f"P{k // 2:03d}_{path.name}"))
    return {"demo": train(["--data-csv", str(manifest)], root / "demo_run", tiny_text_encoder, "--text-template",
                          "a handwritten {class_name}"),
            "chinese": train(["--data-dir", str(hips)], root / "hips_run", tiny_text_encoder, "--text-template",
                             "一张{class_name}的X光片", "--group-regex", r"(P\d+)_", "--test-fraction", "0.25")}


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of a page: rows of stripped cells, the rule row left out."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|[-:|]+\|", line.replace(" ", "")):
                current.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            found.append(current)
            current = []
    return found


def english_words(text: str, allowed: set[str]) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", text) if w not in TECHNICAL and w not in allowed]


def assert_same_numbers_and_chinese_structure(english: str, chinese: str, allowed: set[str]) -> None:
    en_tables, zh_tables = tables(english), tables(chinese)
    assert len(en_tables) == len(zh_tables) > 0
    for en_table, zh_table in zip(en_tables, zh_tables):
        assert len(en_table) == len(zh_table)
        for row, (en_row, zh_row) in enumerate(zip(en_table, zh_table)):
            if row == 0:  # the header: Chinese, with the numbers (fold numbers, patients) of the English one
                assert all(needs_cjk([cell]) or not english_words(cell, allowed) for cell in zh_row), zh_row
                assert any(needs_cjk([cell]) for cell in zh_row), zh_row
                assert NUMBER.findall(" ".join(zh_row)) == NUMBER.findall(" ".join(en_row))
            else:  # the numbers, cell by cell
                assert [NUMBER.findall(c) for c in zh_row] == [NUMBER.findall(c) for c in en_row]
    for line in chinese.splitlines():
        if line.startswith("#"):
            assert needs_cjk([line]) and not english_words(line, allowed), line
    assert sorted(NUMBER.findall(chinese)) == sorted(NUMBER.findall(english))


def run_names(run: Path) -> set[str]:
    """Words of a run's own names (classes, encoders, file paths) that a Chinese page quotes as they are."""
    return set(re.findall(r"[A-Za-z][A-Za-z-]{2,}", (run / "oof_predictions.csv").read_text(encoding="utf-8")
                          + (run / "config.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", ["demo", "chinese"])
def test_report_zh_has_the_numbers_of_report_md_under_chinese_headings(runs: dict[str, Path], name: str) -> None:
    run = runs[name]
    english = (run / "report.md").read_text(encoding="utf-8")
    chinese = (run / "report.zh.md").read_text(encoding="utf-8")
    assert_same_numbers_and_chinese_structure(english, chinese, run_names(run))
    for heading in ("## 汇总", "## 各类别（汇总折外预测）", "## 混淆矩阵", "## 方法", "## 模型看的是哪里"):
        assert heading in chinese.splitlines()
    methods = chinese.split("## 方法\n\n")[1].strip()
    assert methods.startswith("数据集共有") and "AdamW" in methods
    written = methods.split("软件：")[0]  # the software sentence quotes the recorded versions and commit as they are
    written = re.sub(r"[A-Za-z0-9_:./-]*/[A-Za-z0-9_:./-]*", "", written)  # and file paths
    assert not re.search(r"\b(the|a|was|were|with|and|of|on|to)\b", written), written
    if name == "chinese":
        for heading in ("## 按患者（汇总折外预测）", "## 各类别（留出测试集，各折模型集成）"):
            assert heading in chinese.splitlines()
        assert "并按患者划分" in methods and "测试集" in methods


def test_report_lang_chooses_the_files_and_the_report_command_follows_it(runs: dict[str, Path], capsys) -> None:
    run = runs["demo"]
    (run / "report.zh.md").unlink()
    assert report_main([str(run), "--report-lang", "en"]) == 0
    assert not (run / "report.zh.md").exists()
    assert report_main([str(run)]) == 0  # the run's own --report-lang: both, the default
    assert (run / "report.zh.md").is_file() and "report.zh.md" in capsys.readouterr().out


def test_leaderboard_zh_has_the_numbers_of_leaderboard_md(runs: dict[str, Path]) -> None:
    root = runs["demo"].parent
    assert leaderboard_main([str(root), "demo_run", "hips_run", "--bbc-resamples", "20"]) == 0
    english = (root / "leaderboard.md").read_text(encoding="utf-8")
    chinese = (root / "leaderboard.zh.md").read_text(encoding="utf-8")
    allowed = run_names(runs["demo"]) | run_names(runs["chinese"]) | {"hips_run", "demo_run", "Nadeau", "Bengio",
                                                                      "Tsamardinos", "Greasidou", "Borboudakis"}
    assert_same_numbers_and_chinese_structure(english, chinese, allowed)
    assert chinese.startswith("排行榜：")
