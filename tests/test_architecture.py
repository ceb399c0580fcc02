"""The package layout's rules (docs/architecture.md), checked from the import statements of
``tfmarket/`` (parsed with ``ast``; nothing is imported), so a change that breaks one fails CI:

* no import cycle between modules (imports inside functions count: a lazy import that closes a
  circle is still a circle; imports under ``if TYPE_CHECKING:`` do not, they never run);
* no module imports another module's ``_private`` name (``from m import _x`` or ``m._x``);
* no module over :data:`MAX_LINES` lines, at most :data:`MAX_TOP_LEVEL` modules directly in
  ``tfmarket/``;
* each package imports only the packages its ``__init__`` docstring allows (:data:`ALLOWED`),
  and no library module imports a command.

The checkers take a package folder, so the tests at the bottom also run them on small
hand-made packages that break each rule: a checker that cannot fail proves nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfmarket"
MAX_LINES = 600
MAX_TOP_LEVEL = 16  # modules directly in tfmarket/, __init__.py not counted
# What ``python -m tfmarket.X`` runs: they parse, call the library and print; nothing imports them.
COMMANDS = {"tfmarket.train", "tfmarket.export", "tfmarket.rank", "tfmarket.calibrate",
            "tfmarket.gallery", "tfmarket.adapt", "tfmarket.data.__main__"}
# Layer of a module -> layers it may import. Top-level modules that are not commands are the
# foundations (errors, config, console, attributes, preprocess, ...); "root" is
# tfmarket/__init__.py, which may reach into serving (the Python API).
ALLOWED = {
    "foundation": {"foundation", "root"},
    "data": {"foundation", "root", "data"},
    "model": {"foundation", "root", "model"},
    "retrieval": {"foundation", "root", "retrieval"},
    "training": {"foundation", "root", "data", "model", "retrieval", "training"},
    "serving": {"foundation", "root", "data", "model", "retrieval", "training", "serving"},
    "root": {"foundation", "root", "serving"},
    "command": {"foundation", "root", "data", "model", "retrieval", "training", "serving"},
}


@dataclass(frozen=True)
class Import:
    """One imported tfmarket module (resolved: ``from a import b`` is ``a.b`` when that is a
    module) and the names taken from it."""

    source: str  # the importing module
    target: str  # the imported module
    names: tuple[str, ...]  # names imported from it (empty for ``import a.b``)
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:`` (annotations only, never run)


def module_name(path: Path, root: Path) -> str:
    """``root/data/records.py`` -> ``tfmarket.data.records`` (``__init__.py``: the package)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> file."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports(root: Path) -> list[Import]:
    """Every import of one tfmarket module by another, anywhere in the file."""
    known = modules(root)
    top = root.name
    found = []
    for source, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        guarded = _type_checking_lines(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == top or alias.name.startswith(top + "."):
                        found.append(Import(source, alias.name, (), node.lineno,
                                            node.lineno in guarded))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the importing module's package
                    package = source if is_package else source.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                if not (base == top or base.startswith(top + ".")):
                    continue
                plain = []
                for alias in node.names:
                    if f"{base}.{alias.name}" in known:  # ``from tfmarket.data import pipeline``
                        found.append(Import(source, f"{base}.{alias.name}", (), node.lineno,
                                            node.lineno in guarded))
                    else:
                        plain.append(alias.name)
                if plain:
                    found.append(Import(source, base, tuple(plain), node.lineno,
                                        node.lineno in guarded))
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself),
    each as a list of module names, sorted (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(component))
    return sorted(cycles)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> modules it imports at run time (TYPE_CHECKING imports left out)."""
    graph: dict[str, set[str]] = {name: set() for name in modules(root)}
    for imp in imports(root):
        if not imp.type_checking and imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    return graph


def private_imports(root: Path) -> list[str]:
    """``module:line: name`` for each ``_private`` name a module takes from another module:
    ``from m import _x``, or ``m._x`` after ``import m`` / ``import m as alias``."""
    problems = []
    for imp in imports(root):
        for name in imp.names:
            if name.startswith("_") and not name.startswith("__"):
                problems.append(f"{imp.source}:{imp.line}: from {imp.target} import {name}")
    for source, path in modules(root).items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}  # local name -> imported tfmarket module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(root.name) and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    dotted = f"{node.module}.{alias.name}"
                    if dotted in modules(root):
                        aliases[alias.asname or alias.name] = dotted
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                dotted = ast.unparse(node.value)
                target = aliases.get(dotted, dotted)
                if target in modules(root) and target != source:
                    problems.append(f"{source}:{node.lineno}: {target}.{node.attr}")
    return sorted(problems)


def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    return [f"{name}: {n} lines" for name, path in modules(root).items()
            if (n := len(path.read_text().splitlines())) > limit]


def top_level_modules(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.py") if p.name != "__init__.py")


def layer(name: str, packages: set[str], top: str = "tfmarket") -> str:
    """The layer of a module: "root", "command", its package's name, or "foundation" (a
    top-level module that is not a command)."""
    if name == top:
        return "root"
    if name in COMMANDS:
        return "command"
    first = name.split(".")[1]
    return first if first in packages else "foundation"


def layering_violations(root: Path) -> list[str]:
    """``source -> target (layer -> layer)`` for each import the :data:`ALLOWED` table forbids,
    and each import of a command."""
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    problems = set()
    for imp in imports(root):
        if imp.source == imp.target:
            continue
        if imp.target in COMMANDS:
            problems.add(f"{imp.source} -> {imp.target}: a command is imported")
            continue
        source, target = layer(imp.source, packages), layer(imp.target, packages)
        if target not in ALLOWED.get(source, set()):
            problems.add(f"{imp.source} -> {imp.target} ({source} -> {target})")
    return sorted(problems)


# --- tfmarket itself ---------------------------------------------------------------------------


def test_no_import_cycle():
    assert find_cycles(import_graph(PACKAGE)) == []


def test_no_module_imports_another_modules_private_name():
    assert private_imports(PACKAGE) == []


def test_no_module_over_the_line_limit():
    assert long_modules(PACKAGE) == []


def test_few_modules_at_the_top_level():
    top = top_level_modules(PACKAGE)
    assert len(top) <= MAX_TOP_LEVEL, top
    assert {c.rpartition(".")[2] for c in COMMANDS if c.count(".") == 1} <= set(top)


def test_packages_import_only_what_their_docstring_allows():
    assert layering_violations(PACKAGE) == []


def test_every_package_says_what_it_holds_and_may_import():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init}: docstring should say what the package may import"


def test_the_import_parser_sees_tfmarkets_real_imports():
    # Guards the checkers above against passing because they see nothing.
    found = {(i.source, i.target) for i in imports(PACKAGE)}
    assert ("tfmarket.data.registry", "tfmarket.data.market1501") in found
    assert ("tfmarket.training.fit", "tfmarket.training.build") in found
    assert ("tfmarket.data", "tfmarket.data.records") in found  # from a package __init__
    assert len(modules(PACKAGE)) > 40


# --- the checkers on packages that break the rules ---------------------------------------------


def test_cycle_finder_on_hand_made_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "e"}, "e": set()}) == [
        ["a", "b"], ["c", "d"]]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tfmarket"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checkers_fail_on_a_package_that_breaks_each_rule(tmp_path):
    root = _package(tmp_path, {
        "data/__init__.py": '"""May import: foundations."""\n',
        # the old circle: the shared types' module dispatches to a reader that imports it back
        "data/market1501.py": "def load():\n    from tfmarket.data.duke import load_duke\n",
        "data/duke.py": "from tfmarket.data.market1501 import Records\n",
        "data/pipeline.py": "from tfmarket.serving import embed\n",  # data -> serving
        "serving/__init__.py": '"""May import: everything."""\n',
        "serving/embed.py": "import tfmarket.train as t\nx = t._fit\n",  # a command, a private
        "serving/rank.py": "from tfmarket.train import _callbacks\n",
        "errors.py": "\n" * 700,
        "train.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from tfmarket.serving.embed import x\n",
        **{f"m{i}.py": "" for i in range(16)},
    })
    assert find_cycles(import_graph(root)) == [["tfmarket.data.duke",
                                                "tfmarket.data.market1501"]]
    assert private_imports(root) == [
        "tfmarket.serving.embed:2: tfmarket.train._fit",
        "tfmarket.serving.rank:1: from tfmarket.train import _callbacks",
    ]
    assert long_modules(root) == ["tfmarket.errors: 700 lines"]
    assert len(top_level_modules(root)) == 18 > MAX_TOP_LEVEL
    assert layering_violations(root) == [
        "tfmarket.data.pipeline -> tfmarket.serving.embed (data -> serving)",
        "tfmarket.serving.embed -> tfmarket.train: a command is imported",
        "tfmarket.serving.rank -> tfmarket.train: a command is imported",
    ]
    # TYPE_CHECKING imports are not run: train -> serving.embed -> train is no cycle.
    assert "tfmarket.serving.embed" not in import_graph(root)["tfmarket.train"]


@pytest.mark.parametrize("line", ["from tfmarket.data import _helper",
                                  "from ..data import _helper",
                                  "import tfmarket.data as d\ny = d._helper"])
def test_private_import_forms(tmp_path, line):
    root = _package(tmp_path, {"data/__init__.py": "_helper = 1\n",
                               "serving/__init__.py": "", "serving/x.py": line + "\n"})
    assert len(private_imports(root)) == 1
