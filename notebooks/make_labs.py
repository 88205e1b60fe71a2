"""Generate the lab notebooks (``notebooks/labs/``) and the teacher's solutions from the tutorials.

The tutorials (``notebooks/NN_*.ipynb``) are the one source; edit them (in Jupyter), then run this script.
In a tutorial's code cell an exercise is a region::

    # EXERCISE: what to do (more comment lines may follow)
    ...the answer: statements, the last of which assigns it...
    # END EXERCISE
    check("name", answer, ...)

The lab replaces the region with the instructions as ``# TODO:`` comments and ``name = None  # TODO``
for each name the region's last statement assigns. The names a region assigns may be used afterwards only
as arguments of ``check(...)`` (which says "not yet" for ``None``), so an unanswered lab still runs top to
bottom; the generator refuses a tutorial that breaks this rule. Labs and solutions carry no outputs.

Usage::

    python notebooks/make_labs.py                  # (re)write notebooks/labs/ from the tutorials
    python notebooks/make_labs.py --check          # exit 1 when notebooks/labs/ is out of step
    python notebooks/make_labs.py --solutions DIR  # the teacher's copy: each lab with its answers filled in
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
START = re.compile(r"^# EXERCISE:\s*(.*)$")
END = "# END EXERCISE"
TUTORIAL_GLOB = "[0-9][0-9]_*.ipynb"


class LabError(ValueError):
    """A tutorial whose exercises cannot become a lab (unclosed region, answer used outside check)."""


def tutorials(folder: Path = HERE) -> list[Path]:
    """The tutorial notebooks of ``folder`` (``NN_name.ipynb``), sorted."""
    return sorted(Path(folder).glob(TUTORIAL_GLOB))


def _python(source: str) -> str:
    """Cell source as plain Python (IPython magics such as ``%matplotlib inline`` become calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _stored(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _answer_names(body: str, where: str) -> tuple[list[str], set[str]]:
    """(names the last statement of ``body`` assigns, in order; every name ``body`` assigns)."""
    try:
        tree = ast.parse(_python(body))
    except SyntaxError as err:
        raise LabError(f"{where}: the exercise does not parse ({err})") from None
    if not tree.body:
        raise LabError(f"{where}: an empty exercise")
    last = tree.body[-1]
    targets = (last.targets if isinstance(last, ast.Assign) else
               [last.target] if isinstance(last, (ast.AnnAssign, ast.AugAssign)) else [])
    answers = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if not answers:
        raise LabError(f"{where}: the last statement of an exercise must assign the answer (answer = ...)")
    return list(dict.fromkeys(answers)), _stored(tree)


def split_cell(source: str, where: str) -> list[tuple]:
    """A code cell's source as parts: ``("code", text)`` and ``("exercise", instructions, body)``."""
    parts, lines, i = [], source.split("\n"), 0
    plain: list[str] = []
    while i < len(lines):
        match = START.match(lines[i])
        if not match:
            if lines[i].strip() == END:
                raise LabError(f"{where}: '{END}' without '# EXERCISE:'")
            plain.append(lines[i])
            i += 1
            continue
        instructions = [match[1].strip()]
        i += 1
        while i < len(lines) and lines[i].startswith("#") and lines[i].strip() != END:
            instructions.append(lines[i].lstrip("#").strip())
            i += 1
        body = []
        while i < len(lines) and lines[i].strip() != END:
            if START.match(lines[i]):
                raise LabError(f"{where}: '# EXERCISE:' inside an exercise")
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise LabError(f"{where}: '# EXERCISE: {instructions[0]}' without '{END}'")
        i += 1  # the END line
        if plain:
            parts.append(("code", "\n".join(plain)))
            plain = []
        parts.append(("exercise", [s for s in instructions if s], "\n".join(body)))
    if plain:
        parts.append(("code", "\n".join(plain)))
    return parts


def _check_call_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside a ``check(...)`` call (answers may appear there)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "check") or (isinstance(f, ast.Attribute) and f.attr == "check"):
                inside |= {id(n) for n in ast.walk(node)}
    return inside


def _uses(code: str, watched: dict[str, str], where: str) -> None:
    """``LabError`` when ``code`` reads a watched name outside ``check(...)``; names it assigns stop being watched."""
    if not watched or not code.strip():
        return
    try:
        tree = ast.parse(_python(code))
    except SyntaxError as err:
        raise LabError(f"{where}: does not parse ({err})") from None
    for statement in tree.body:
        allowed = _check_call_nodes(statement)
        for node in ast.walk(statement):
            if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in watched
                    and id(node) not in allowed):
                raise LabError(f"{where}: uses {node.id!r}, which the exercise of {watched[node.id]} assigns; in the "
                               "lab it is missing or None, so use it only inside check(...)")
        for name in _stored(statement):
            watched.pop(name, None)


def lab_source(parts: list[tuple], where: str) -> str:
    """The lab's version of a cell split by :func:`split_cell`."""
    out = []
    for part in parts:
        if part[0] == "code":
            out.append(part[1])
            continue
        _, instructions, body = part
        answers, _ = _answer_names(body, where)
        lines = [f"# TODO: {instructions[0]}" if instructions else "# TODO"]
        lines += [f"#       {s}" for s in instructions[1:]]
        lines += [f"{name} = None  # TODO: your answer" for name in answers]
        out.append("\n".join(lines))
    return "\n".join(out)


def _header(text: str, cell_id: str):
    cell = nbformat.v4.new_markdown_cell(text)
    cell.id = cell_id
    return cell


def _clean(nb):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in ("tags", "jupyter")}
    return nb


def make_lab(nb, name: str):
    """The lab notebook of tutorial ``nb`` (file name ``name``): exercises replaced, outputs removed.

    Raises :class:`LabError` when an exercise is malformed or its names are used outside ``check``.
    """
    lab = _clean(nb)
    watched: dict[str, str] = {}
    n_exercises = 0
    for k, cell in enumerate(lab.cells):
        if cell.cell_type != "code":
            continue
        where = f"{name}, cell {k}"
        parts = split_cell(cell.source, where)
        for part in parts:
            if part[0] == "code":
                _uses(part[1], watched, where)
            else:
                n_exercises += 1
                _, assigned = _answer_names(part[2], where)
                watched.update({n: where for n in assigned})
        cell.source = lab_source(parts, where)
    lab.cells.insert(0, _header(
        f"**Lab version** of the tutorial `{name}` ({n_exercises} exercises). Work through the notebook top to "
        "bottom; in each cell marked `# TODO`, replace `None` with your answer and run the cell: `check(...)` "
        "prints `correct`, or `not yet` with a hint.\n\n"
        "*Generated by `notebooks/make_labs.py` from the tutorial; do not edit it here: edit the tutorial and run "
        "`python notebooks/make_labs.py`.*", "lab-header"))
    return lab


def make_solution(nb, name: str):
    """The teacher's copy of the lab of tutorial ``nb``: the tutorial's cells (answers between the
    ``# EXERCISE`` markers), no outputs, and a header naming the lab."""
    make_lab(nb, name)  # the same validation as the lab
    solution = _clean(nb)
    solution.cells.insert(0, _header(
        f"**Solutions** of the lab `labs/{name}` (teacher's copy, built by "
        "`python notebooks/make_labs.py --solutions DIR`). Each answer sits between `# EXERCISE` and "
        "`# END EXERCISE`; the check under it prints `correct`.", "solutions-header"))
    return solution


def render(nb) -> str:
    """The notebook as the text written to disk (what ``--check`` compares)."""
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def build(folder: Path, solutions: bool = False) -> dict[str, str]:
    """``{file name: text}`` of every lab (or solution) of the tutorials in ``folder``."""
    out = {}
    for path in tutorials(folder):
        nb = nbformat.read(path, as_version=4)
        out[path.name] = render(make_solution(nb, path.name) if solutions else make_lab(nb, path.name))
    return out


def out_of_step(folder: Path = HERE) -> list[str]:
    """Problems of ``folder/labs`` against the tutorials: labs missing, differing, or without a tutorial."""
    expected = build(folder)
    labs = Path(folder) / "labs"
    problems = []
    for name, text in expected.items():
        path = labs / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text() != text:
            problems.append(f"{path}: differs from the lab generated from {name}")
    for path in sorted(labs.glob("*.ipynb")):
        if path.name not in expected:
            problems.append(f"{path}: no tutorial {path.name} beside labs/")
    return problems


def write(files: dict[str, str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python notebooks/make_labs.py",
                                description="Generate the lab notebooks (notebooks/labs/) and the teacher's "
                                            "solutions from the tutorials notebooks/NN_*.ipynb.")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when labs/ is out of step")
    p.add_argument("--solutions", type=Path, metavar="DIR", help="write the solutions into DIR instead of the labs")
    p.add_argument("--notebooks", type=Path, default=HERE, help="the tutorials' folder (default: this script's)")
    args = p.parse_args(argv)
    try:
        if args.check:
            problems = out_of_step(args.notebooks)
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print("labs are out of step with the tutorials: run python notebooks/make_labs.py", file=sys.stderr)
                return 1
            print(f"labs in step with {len(tutorials(args.notebooks))} tutorials")
            return 0
        if args.solutions is not None:
            written = write(build(args.notebooks, solutions=True), args.solutions)
        else:
            labs = args.notebooks / "labs"
            expected = build(args.notebooks)
            written = write(expected, labs)
            for stale in sorted(labs.glob("*.ipynb")):
                if stale.name not in expected:
                    print(f"note: {stale} has no tutorial (not removed)", file=sys.stderr)
    except (LabError, nbformat.ValidationError, OSError) as err:
        print(f"make_labs: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} notebooks written, the others were up to date" if written else "all up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
