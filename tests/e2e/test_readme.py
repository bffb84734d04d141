"""The README is the user's manual: it must name every flag and the commands it promises."""

from training.config import config_fields, flag_of
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_documents_every_flag():
    missing = [flag_of(f) for f in config_fields() if f"| `{flag_of(f)}" not in README]  # a row of the table
    assert not missing, f"flags missing from README.md: {missing}"


def test_readme_names_the_two_commands_and_a_chinese_quick_start():
    assert "make demo" in README and "make test" in README
    assert "## 中文快速上手" in README


def test_makefile_targets_exist_for_the_readme_commands():
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
