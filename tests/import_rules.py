"""Who may import whom: one rule table and a checker that reads the imports of every ``.py`` file.

Why the rules exist (``docs/design.md`` §2): the code is built in floors so that each floor can be read,
tested and reused without the ones above it. ``utils`` is the ground floor that everybody stands
on; ``data`` and ``models`` stand on it and never on each other, so a data change cannot break a
model and the other way round; ``training`` puts them together; the study runner only plans jobs,
so it reads the run configuration and results without pulling in the engine, the data pipeline
or torch. The scripts ``train_clip.py`` and ``predict.py`` are the top floor: programs, not
libraries, so nothing but the tests imports them. Without a check, one convenient import quietly
turns the floors into a tangle; this module is that check.

The checker parses files with ``ast`` and imports nothing it reads, so it is fast and torch-free.
Every import counts: ``import x.y``, ``from x.y import z``, relative imports, and imports inside
functions (a lazy import is still a dependency, only a later one).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

ANY_PACKAGE = "*"  # in a rule: every package of ours (scripts still follow the special rule)

# Package (or one of its modules, by dotted name) -> what it may import besides itself.
# The most specific entry wins: ``training.config`` has its own rule because ``study`` may import
# it; if it could import the rest of ``training``, that permission would mean nothing.
RULES: Mapping[str, frozenset[str]] = {
    "utils": frozenset(),
    "data": frozenset({"utils"}),
    "models": frozenset({"utils"}),
    "reporting": frozenset({"utils", "models"}),
    "training": frozenset({"utils", "data", "models", "reporting"}),
    "training.config": frozenset({"utils", "reporting", "training.checks"}),
    # The config's value checks, a module of their own to keep training/config.py short; models only
    # lazily (has_zero_shot_start), so that reading a config loads no torch.
    "training.checks": frozenset({"utils", "models"}),
    "training.arguments": frozenset({"utils", "reporting", "training.config"}),
    "study": frozenset({"training.config", "training.arguments", "reporting", "utils", "models"}),
    "export": frozenset({"utils", "data", "models", "reporting", "training"}),
    # The exported model's runner works without torch: only modules that import none.
    "export.predict": frozenset({"utils", "data.dicom", "data.folder", "data.manifest", "data.pixels",
                                 "reporting.prediction_csv", "export.layout"}),
    "export.layout": frozenset({"utils"}),
    "tests": frozenset({ANY_PACKAGE}),
}

# The special rule: scripts (top-level ``.py`` files and folders of scripts without
# ``__init__.py``, such as ``benchmarks/``) are leaf programs. They may import any package, and
# nothing imports them except these packages.
SCRIPT_IMPORTERS = frozenset({"tests"})


@dataclass(frozen=True)
class Layout:
    """The repository's own top-level names (packages, and scripts nobody may import) and files."""

    root: Path
    packages: frozenset[str]
    scripts: frozenset[str]
    files: tuple[Path, ...]

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(module_name(self.root, path) for path in self.files)

    def is_ours(self, module: str) -> bool:
        return top_level(module) in self.packages | self.scripts


@dataclass(frozen=True)
class Import:
    """One import statement's target, as an absolute dotted module name."""

    path: Path
    line: int
    module: str


def top_level(module: str) -> str:
    return module.partition(".")[0]


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def is_source_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "__")) and any(path.rglob("*.py"))


def discover(root: Path) -> Layout:
    """Folders with ``__init__.py`` are packages; top-level ``.py`` files and other folders of
    ``.py`` files (``benchmarks/``) are scripts."""
    folders = [path for path in sorted(root.iterdir()) if is_source_dir(path)]
    packages = frozenset(path.name for path in folders if (path / "__init__.py").is_file())
    top_scripts = sorted(root.glob("*.py"))
    scripts = frozenset(path.stem for path in top_scripts) | frozenset(
        path.name for path in folders if path.name not in packages)
    files = top_scripts + [path for folder in folders for path in sorted(folder.rglob("*.py"))]
    return Layout(root, packages, scripts, tuple(files))


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """``from ..x import y`` inside ``importer`` -> the absolute name of ``x``."""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_modules(path: Path, importer: str, modules: frozenset[str]) -> Iterator[Import]:
    """Every module that ``path`` imports, wherever the statement is (functions included)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = (resolve_relative(importer, is_package, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                yield Import(path, node.lineno, submodule if submodule in modules else base)


def unit_of(module: str) -> str:
    """The most specific rule-table entry that ``module`` falls under (or its top-level name)."""
    matches = [name for name in RULES if within(module, name)]
    return max(matches, key=len) if matches else top_level(module)


def allowed_text(allowed: Iterable[str]) -> str:
    names = sorted(allowed)
    return ", ".join(names) if names else "nothing of ours"


def violation(layout: Layout, imp: Import, importer: str, allowed: str) -> str:
    where = imp.path.relative_to(layout.root).as_posix()
    return f"{where}:{imp.line}: {importer} imports {imp.module} (allowed: {allowed})"


def check_import(layout: Layout, imp: Import, importer_module: str) -> str | None:
    """A violation message for one import, or None when the rules allow it."""
    importer = unit_of(importer_module)
    target = imp.module
    if top_level(target) in layout.scripts:
        if top_level(importer) in SCRIPT_IMPORTERS or top_level(target) == top_level(importer):
            return None
        return violation(layout, imp, importer, "scripts are imported by " + allowed_text(SCRIPT_IMPORTERS)
                         + " only")
    if top_level(importer) in layout.scripts or within(target, importer):
        return None
    if importer not in RULES:
        return violation(layout, imp, importer, "no rule for this package yet: add one to RULES")
    allowed = RULES[importer]
    if ANY_PACKAGE in allowed or any(within(target, name) for name in allowed):
        return None
    return violation(layout, imp, importer, allowed_text(allowed))


def find_violations(root: Path) -> list[str]:
    """Every import under ``root`` that breaks the rule table, as ``path:line: ...`` strings."""
    layout = discover(root)
    modules = layout.modules
    found = []
    for path in layout.files:
        importer = module_name(root, path)
        for imp in imported_modules(path, importer, modules):
            if layout.is_ours(imp.module):
                message = check_import(layout, imp, importer)
                if message:
                    found.append(message)
    return found


def import_graph(layout: Layout) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (lazy imports included), for every package module
    outside ``tests``."""
    modules = layout.modules
    graph: dict[str, set[str]] = {}
    for path in layout.files:
        importer = module_name(layout.root, path)
        if top_level(importer) not in layout.packages or top_level(importer) == "tests":
            continue
        graph[importer] = {imp.module for imp in imported_modules(path, importer, modules)
                           if imp.module in modules and imp.module != importer}
    return graph


def find_import_circles(root: Path) -> list[str]:
    """Every set of modules that import each other, directly or round a loop, as "a -> b -> a".

    A circle means neither module can be read or tested without the other: the two are one
    module in two files, or a third module holds what both need. Found as the strongly connected
    components of the import graph (Tarjan's algorithm), each shown along one of its loops.
    """
    graph = import_graph(discover(root))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [" -> ".join(loop_through(graph, component)) for component in sorted(components)]


def loop_through(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """One loop from the component's first module back to it, inside the component (breadth first)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in sorted(graph.get(module, set()) & members):
            if target == start:
                return paths[module] + [start]
            if target not in paths:
                paths[target] = paths[module] + [target]
                queue.append(target)
    return component


def untested_modules(root: Path) -> list[str]:
    """Modules of the packages (``__init__`` and ``__main__`` aside) that no file under ``tests/``
    imports, and scripts that no test names: code whose every line could break unnoticed."""
    layout = discover(root)
    modules = layout.modules
    imported = {imp.module for path in layout.files if top_level(module_name(root, path)) == "tests"
                for imp in imported_modules(path, module_name(root, path), modules)}
    return sorted(module for module in modules
                  if top_level(module) in layout.packages - {"tests"} and module not in layout.packages
                  and not module.endswith(".__main__") and module not in imported)
