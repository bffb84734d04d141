"""The package structure stays honest: the real repository follows the import rules of
``tests/import_rules.py``, and the checker catches each kind of break (it parses, never imports)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.import_rules import RULES, discover, find_import_circles, find_violations, top_level, untested_modules

# A small tree shaped like the real one, with one allowed import of each kind (lazy and relative ones too).
GOOD_TREE = {
    "utils/__init__.py": "",
    "utils/io.py": "import json\nfrom utils.errors import UserError\n",
    "utils/errors.py": "class UserError(Exception):\n    pass\n",
    "data/__init__.py": "",
    "data/folder.py": "from utils.io import UserError\nfrom . import texts\n",
    "data/texts.py": "def load():\n    from utils import io\n",
    "models/__init__.py": "from models.loss import loss\n",
    "models/loss.py": "import utils.errors\n\ndef loss():\n    pass\n",
    "reporting/__init__.py": "",
    "reporting/metrics.py": "from utils.io import UserError\nfrom models import loss\n",
    "training/__init__.py": "",
    "training/config.py": "from reporting import metrics\nfrom utils.io import UserError\n",
    "training/engine.py": "from data.folder import UserError\nfrom models.loss import loss\nfrom .config import x\n",
    "study/__init__.py": "",
    "study/plan.py": "from training.config import x\nfrom models.loss import loss\nimport reporting.metrics\n",
    "tests/__init__.py": "",
    "tests/test_run.py": "import train_clip\nimport predict\nfrom training import engine\n",
    "benchmarks/bench.py": "import data.folder\nfrom tests import test_run\n",
    "train_clip.py": "from training.engine import x\nfrom study import plan\n",
    "predict.py": "from training.engine import x\n",
}

# (file added to the good tree, its source, the one violation it must produce)
BREAKS = {
    "data imports models": (
        "data/bad.py", "import os\nfrom models.loss import loss\n",
        "data/bad.py:2: data imports models.loss (allowed: utils)"),
    "models imports data": (
        "models/bad.py", "import data.folder\n",
        "models/bad.py:1: models imports data.folder (allowed: utils)"),
    "utils imports data": (
        "utils/bad.py", "from data import folder\n",
        "utils/bad.py:1: utils imports data.folder (allowed: nothing of ours)"),
    "a package imports a script": (
        "reporting/bad.py", "import train_clip\n",
        "reporting/bad.py:1: reporting imports train_clip (allowed: scripts are imported by tests only)"),
    "a benchmark imports a script": (
        "benchmarks/bad.py", "from predict import main\n",
        "benchmarks/bad.py:1: benchmarks imports predict (allowed: scripts are imported by tests only)"),
    "a script imports a script": (
        "other_script.py", "import train_clip\n",
        "other_script.py:1: other_script imports train_clip (allowed: scripts are imported by tests only)"),
    "a relative import": (
        "training/config.py", "from .engine import fit\n",
        "training/config.py:1: training.config imports training.engine (allowed: reporting, training.checks, utils)"),
    "an import inside a function": (
        "reporting/bad.py", "def plot():\n    from data.texts import load\n",
        "reporting/bad.py:2: reporting imports data.texts (allowed: models, utils)"),
    "study imports the rest of training": (
        "study/bad.py", "from training import engine\n",
        "study/bad.py:1: study imports training.engine (allowed: models, reporting, training.arguments, training.config, "
        "utils)"),
    "a package without a rule": (
        "newpkg/__init__.py", "import utils.io\n",
        "newpkg/__init__.py:1: newpkg imports utils.io (allowed: no rule for this package yet: add one to RULES)"),
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def test_the_repository_follows_the_import_rules() -> None:
    violations = find_violations(ROOT)
    assert violations == [], "\n".join(violations)


def test_every_package_of_the_repository_has_a_rule() -> None:
    layout = discover(ROOT)
    assert {"train_clip", "predict"} <= layout.scripts
    assert layout.packages - {top_level(name) for name in RULES} == set()


def test_a_tree_that_follows_the_rules_reports_nothing(tmp_path: Path) -> None:
    assert find_violations(write_tree(tmp_path, GOOD_TREE)) == []


@pytest.mark.parametrize("name", BREAKS)
def test_each_broken_rule_is_reported(tmp_path: Path, name: str) -> None:
    path, source, expected = BREAKS[name]
    assert find_violations(write_tree(tmp_path, {**GOOD_TREE, path: source})) == [expected]


def test_no_module_of_the_repository_is_in_an_import_circle() -> None:
    circles = find_import_circles(ROOT)
    assert circles == [], "\n".join(circles)


def test_an_import_circle_is_reported_lazy_imports_included(tmp_path: Path) -> None:
    circle = {"models/text.py": "from models.chinese import LIMIT\n",
              "models/chinese.py": "def build():\n    from models import text\n"}
    assert find_import_circles(write_tree(tmp_path, GOOD_TREE)) == []
    assert find_import_circles(write_tree(tmp_path, {**GOOD_TREE, **circle})) == [
        "models.chinese -> models.text -> models.chinese"]
    longer = {"data/a.py": "import data.b\n", "data/b.py": "from data import c\n", "data/c.py": "from . import a\n"}
    assert find_import_circles(write_tree(tmp_path / "three", {**GOOD_TREE, **longer})) == [
        "data.a -> data.b -> data.c -> data.a"]


def test_every_module_of_the_repository_is_imported_by_a_test() -> None:
    assert untested_modules(ROOT) == []


def test_a_module_no_test_imports_is_reported(tmp_path: Path) -> None:
    assert untested_modules(write_tree(tmp_path, GOOD_TREE)) == ["data.folder", "data.texts", "models.loss",
                                                                  "reporting.metrics", "study.plan",
                                                                  "training.config", "utils.errors", "utils.io"]
    tested = {"tests/test_all.py": "from data import folder, texts\nimport models.loss\nfrom reporting import "
                                   "metrics\nfrom study.plan import x\nfrom training import config\n"
                                   "from utils import errors\n"}
    assert untested_modules(write_tree(tmp_path, {**GOOD_TREE, **tested})) == ["utils.io"]
