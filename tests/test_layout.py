"""The architecture as tests: the layers' import rule, and ``dvc.yaml`` deps that match the code.

Imports are read from the source (every ``import`` statement, those inside functions too), so a
lazy import counts like a top-level one: it still runs when the stage does.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "pipeline"

# layer -> the layers it may import (besides itself). ``util`` is the foundation every layer
# stands on; nothing imports ``tools``. The entry points (``stages/``, ``pipeline/cli.py``) are
# not layers: they may import anything.
ALLOWED = {
    "util": set(),
    "core": {"util"},
    "study": {"core", "util"},
    "sweep": {"study", "core", "util"},
    "report": {"study", "util"},
    "tools": {"sweep", "study", "core", "util"},
}


def _module_file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:``: imports for annotations, never run."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


@cache
def _imports(path: Path, run_only: bool = False) -> frozenset[str]:
    """The ``pipeline.*`` / ``stages.*`` modules ``path`` imports, resolved to files that exist
    (``from pipeline.core import schemes`` names the module ``pipeline.core.schemes``).
    ``run_only``: leave out the imports under ``if TYPE_CHECKING:`` (annotations only)."""
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree) if run_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in ("pipeline", "stages") and _module_file(name):
                out.add(name)
    return frozenset(out)


def _closure(module: str) -> set[Path]:
    """Every project file that running ``module`` may import, packages' ``__init__`` included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            f = _module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo.extend(_imports(f))
    return seen


def _layer(path: Path) -> str | None:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else None


def _code_dep(path: Path) -> str:
    """The ``dvc.yaml`` dep that covers ``path``: its layer's folder, else the file itself."""
    rel = path.relative_to(REPO)
    if rel.parts[0] == "pipeline" and len(rel.parts) > 2:
        return "/".join(rel.parts[:2])
    return rel.as_posix()


def test_every_module_belongs_to_a_layer() -> None:
    layers = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert layers == set(ALLOWED), layers ^ set(ALLOWED)
    top = {p.name for p in PKG.glob("*.py")}
    assert top == {"__init__.py", "cli.py"}, "a module outside the layers: " + str(top)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_the_layers_below(layer: str) -> None:
    bad = []
    for f in sorted((PKG / layer).rglob("*.py")):
        for mod in _imports(f):
            if mod == "pipeline":  # the root package (empty): its location, not its code
                continue
            if not mod.startswith("pipeline."):
                bad.append(f"{f.relative_to(REPO)} imports {mod} (an entry point)")
                continue
            target = _layer(_module_file(mod))
            if target not in ALLOWED[layer] | {layer}:
                bad.append(f"{f.relative_to(REPO)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module() -> None:
    bad = []
    for f in [*PKG.rglob("*.py"), *(REPO / "stages").glob("*.py"), *(REPO / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                bad += [
                    f"{f.relative_to(REPO)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not bad, "\n".join(bad)


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_deps_are_exactly_the_code_the_stage_runs(stage: str) -> None:
    spec = _stages()[stage]
    module = re.search(r"python -m (stages\.\w+)", spec["cmd"])
    assert module, spec["cmd"]
    needed = {
        _code_dep(f)
        for f in _closure(module[1])
        if f.name != "__init__.py" or f.parent != REPO / "stages"
    }
    needed -= {"pipeline/__init__.py"}
    declared = {d for d in spec["deps"] if d.split("/")[0] in ("pipeline", "stages")}
    assert declared == needed, (
        f"{stage}: missing {sorted(needed - declared)}, not used {sorted(declared - needed)}"
    )


def test_the_sweep_does_not_depend_on_the_report_or_the_tools() -> None:
    deps = set(_stages()["sweep"]["deps"])
    assert not deps & {"pipeline", "pipeline/report", "pipeline/tools"}, deps


def _cycles() -> list[list[str]]:
    """The import cycles among ``pipeline`` modules (strongly connected components of more
    than one module, or a module importing itself), every import statement that runs counted:
    a lazy import inside a function closes a cycle as surely as a top-level one (an import
    under ``if TYPE_CHECKING:`` never runs, so it does not)."""
    files = sorted(PKG.rglob("*.py"))
    graph = {
        f: {m for m in (_module_file(i) for i in _imports(f, run_only=True)) if m in files}
        for f in files
    }
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    out: list[list[str]] = []

    def visit(v: Path) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(str(c.relative_to(REPO)) for c in comp))

    for f in files:
        if f not in index:
            visit(f)
    return out


def test_no_import_cycles_function_level_imports_included() -> None:
    assert _cycles() == []


def test_the_cycle_check_sees_a_lazy_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check can fail: two modules whose only link back is an import inside a function (and
    one under ``if TYPE_CHECKING:`` is no link)."""
    study = tmp_path / "pipeline" / "study"
    study.mkdir(parents=True)
    for init in (tmp_path / "pipeline" / "__init__.py", study / "__init__.py"):
        init.write_text("")
    (study / "a.py").write_text("from pipeline.study import b\n")
    (study / "b.py").write_text("def f():\n    from pipeline.study import a\n")
    (study / "c.py").write_text("from pipeline.study import a\n")  # imports, in no cycle
    (study / "d.py").write_text(  # a link back for annotations only: never runs, no cycle
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.study import e\n"
    )
    (study / "e.py").write_text("from pipeline.study import d\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path / "pipeline")
    assert _cycles() == [["pipeline/study/a.py", "pipeline/study/b.py"]]


MAX_MODULE_LINES = 700


def test_no_module_is_over_700_lines() -> None:
    """A module past 700 lines holds more than one concern: split it by concept (a facade
    module may re-export the names others use)."""
    long = {
        str(f.relative_to(REPO)): n
        for f in sorted(PKG.rglob("*.py"))
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_test_modules_have_unique_names() -> None:
    # the test folders are not packages: pytest imports each test module by its file name, so
    # two modules of one name (tests/study/test_tables.py, tests/report/test_tables.py) stop
    # the collection of the whole suite
    names: dict[str, list[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {n: paths for n, paths in names.items() if len(paths) > 1} == {}
