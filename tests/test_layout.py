"""The layout keeps its promises: one owner per concept, small modules, no import cycle, imports at the top.

These read the source as text (``ast`` for imports): a change that types a fold name again, copies the
near-duplicate threshold, makes folds or resamples outside their owners, or adds a cycle fails here. An import
inside a function is an edge of the import graph as one at the top is: it only defers the cycle to the call.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smallct"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
# A fold's indices built from an assignment: a comparison of an assignment (indexed or not) with a fold, or
# (flat)nonzero/where/argwhere of one. Folds.train_test is the one place (smallct.data.folds).
FOLD_INDICES = r"\bassignment(\[[^\]\n]*\])?\s*[!=]=|\b(flatnonzero|nonzero|argwhere|where)\([^)\n]*assignment\b"


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _where(pattern: str) -> set[str]:
    """Modules whose source matches ``pattern``."""
    return {_name(p) for p in MODULES if re.search(pattern, p.read_text())}


def test_each_concept_has_one_owner():
    assert _where(r"r\{[^}]*\}_f\{") == {"smallct.engine.run_folder"}  # the fold name r{repeat}_f{fold}
    assert _where(r"\b0\.92\b") == {"smallct.config.run"}  # the near-duplicate threshold
    assert _where(r"Stratified(Group)?KFold|fold_assignment\(") == {"smallct.data.folds"}  # making folds
    assert _where(r"make_folds\(") <= {"smallct.data.folds", "smallct.engine.cv", "smallct.studies.curve",
                                       "smallct.analysis.audit", "smallct._legacy"}  # (_legacy: a message)
    assert _where(r"\.integers\(0, (\w+|self\.\w+), \1\)") == {"smallct.evaluation.intervals"}  # bootstrap draws
    assert _where(r"os\.replace\(") == {"smallct.io.files"}  # atomic writes
    assert _where(r"ProcessPoolExecutor") == {"smallct.parallel"}  # parallel maps
    assert _where(r"sched_getaffinity|os\.cpu_count") == {"smallct.parallel"}  # the core count
    assert _where(r"\bor [\w.\[\]]*input_size\b") == {"smallct.models.weights"}  # --img-size or the weights' size
    assert _where(FOLD_INDICES) == {"smallct.data.folds"}  # a fold's training and test indices


def test_the_rule_of_a_folds_indices_catches_each_way_of_building_them():
    # 0.3.0's analysis.compare, analysis.ensemble and analysis.audit built them so (a rule matching "!=" alone,
    # as before, missed all three); the run record's own "assignment" key is no fold's indices
    built = ["idx = np.flatnonzero(ra.assignment[r] == k)", "test = np.flatnonzero(assignment[r] == k)",
             "test, train = assignment == k, assignment != k", "np.where(self.assignment[repeat] != fold)[0]",
             "np.nonzero(assignment[r] == k)"]
    assert all(re.search(FOLD_INDICES, line) for line in built)
    other = ['a = np.asarray(record["folds"]["assignment"])', "if old.assignment.shape != new.assignment.shape:",
             "reassignment = 1", "np.flatnonzero(labels == c)"]
    assert not any(re.search(FOLD_INDICES, line) for line in other)


def test_the_run_folder_names_its_files_and_builds_no_model_or_dataset():
    # fails on 0.3.0, whose run_folder.py (at the size cap) also rebuilt fold models and a run's images: that is
    # smallct.engine.run_models' (a mutant moving load_fold_model or Run.dataset back fails here)
    top, local = _imports(PACKAGE / "engine" / "run_folder.py")
    used = top | {m for _, m in local}
    assert not {m for m in used if m.startswith("smallct.models.registry") or m.endswith(".load_data")}, used


def test_modules_are_small():
    long = {_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"modules over 420 lines: {long}"


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """The smallct modules ``path`` imports at its top level, and (line, module) of imports inside functions (each
    module an import statement may name: ``from a import b`` names ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text())
    top, local = set(), []

    def modules(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:  # relative imports are not used in smallct
            return [f"relative:{node.module}"]
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    local += [(inner.lineno, m) for m in modules(inner)]
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top |= {m for m in modules(node) if m.startswith("smallct")}
    return top, local


def _graph(paths) -> dict[str, dict[str, str]]:
    """{module: {module it imports: "top" or "line N" (a function-local import)}} among the smallct ``paths``."""
    known = {_name(p) for p in paths}
    graph = {}
    for p in paths:
        top, local = _imports(p)
        edges = {m: f"line {line}" for line, m in reversed(local)}  # the first line that imports m
        edges.update(dict.fromkeys(top, "top"))
        graph[_name(p)] = {m: how for m, how in edges.items() if m in known and m != _name(p)}
    return graph


def test_a_function_local_import_is_an_edge(tmp_path, monkeypatch):
    # mutant caught: a graph of top-level imports only (0.3.0's), where folder.py -> head_ct.py -> folder.py,
    # head_ct's half inside two functions, was no cycle
    package = tmp_path / "smallct"
    package.mkdir()
    (package / "a.py").write_text("from smallct import b\n")
    (package / "b.py").write_text("def f():\n    from smallct.a import g  # on use\n    return g\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    assert _graph([package / "a.py", package / "b.py"]) == {"smallct.a": {"smallct.b": "top"},
                                                            "smallct.b": {"smallct.a": "line 2"}}


def test_no_import_cycle_between_modules():
    graph = _graph(MODULES)
    # a package's __init__ only names its exports (lazily); importing it imports none of its modules
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
                edges = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
                pytest.fail(f"import cycle: {'; '.join(edges)}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_function_local_imports_say_why():
    undocumented = []
    for p in MODULES:
        lines = p.read_text().splitlines()
        for lineno, module in dict(reversed(_imports(p)[1])).items():  # one per statement: its first module
            if "#" not in lines[lineno - 1]:
                undocumented.append(f"{_name(p)}:{lineno} {module}")
    assert not undocumented, f"function-local imports without a comment saying why: {undocumented}"


def test_no_package_exports_a_name_of_its_own_submodule():
    # ``from smallct.apply import predict`` would give the function or the module, by import order
    import importlib
    import inspect

    for init in PACKAGE.rglob("__init__.py"):
        package = _name(init)
        submodules = {p.stem for p in init.parent.glob("*.py")} | {p.name for p in init.parent.iterdir() if p.is_dir()}
        module = importlib.import_module(package)
        exported = {n for n in getattr(module, "__all__", []) if not inspect.ismodule(getattr(module, n))}
        assert not exported & submodules, f"{package} exports {exported & submodules}, also its submodules"


def test_choices_of_the_configs_are_the_keys_of_the_engines_tables():
    import typing

    from smallct.config.studies import Select
    from smallct.engine.nested import SELECT

    assert tuple(SELECT) == typing.get_args(Select)
