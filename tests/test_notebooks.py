"""The notebooks: committed without outputs, labs in step with the tutorials, and every tutorial and every
lab solution runs top to bottom with nbclient in quick mode (``SMALLCT_QUICK=1``), every check correct."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra: pip install -e '.[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra: pip install -e '.[notebooks]'")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_explore_head_ct", "02_preprocessing", "03_transfer_learning_cv", "04_tuning_with_optuna",
            "05_explain_errors", "06_rsna_multilabel", "07_few_shot_and_transfer"]
# Notebooks that run on the real Head CT set in the tests (the others on the phantom set, for time).
REAL_DATA = {"01_explore_head_ct"}
KERNEL = "smallct-test-python"


def _load_make_labs():
    spec = importlib.util.spec_from_file_location("make_labs", NOTEBOOKS / "make_labs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_labs = _load_make_labs()


# --- static checks ---------------------------------------------------------------------------------

def test_every_tutorial_has_its_lab():
    assert [p.stem for p in TUTORIALS] == EXPECTED
    assert sorted(p.stem for p in (NOTEBOOKS / "labs").glob("*.ipynb")) == EXPECTED


def test_committed_notebooks_have_no_outputs():
    with_outputs = []
    for path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                with_outputs.append(f"{path.relative_to(NOTEBOOKS)} cell {k}")
    assert not with_outputs, f"clear the outputs before committing: {with_outputs}"


def test_labs_are_in_step_with_the_tutorials():
    assert make_labs.out_of_step(NOTEBOOKS) == []
    assert make_labs.main(["--check"]) == 0


def test_check_fails_when_a_tutorial_changes_and_passes_after_regenerating(tmp_path, capsys):
    for path in TUTORIALS:
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "labs").mkdir()
    for path in (NOTEBOOKS / "labs").glob("*.ipynb"):
        (tmp_path / "labs" / path.name).write_text(path.read_text())
    assert make_labs.main(["--check", "--notebooks", str(tmp_path)]) == 0
    nb = nbformat.read(tmp_path / TUTORIALS[1].name, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "# EXERCISE:" in c.source)
    cell.source = cell.source.replace("# EXERCISE:", "# EXERCISE: (changed)", 1)
    nbformat.write(nb, tmp_path / TUTORIALS[1].name)
    assert make_labs.main(["--check", "--notebooks", str(tmp_path)]) == 1
    assert f"{TUTORIALS[1].name}: differs" in capsys.readouterr().err
    assert make_labs.main(["--notebooks", str(tmp_path)]) == 0
    assert make_labs.main(["--check", "--notebooks", str(tmp_path)]) == 0
    (tmp_path / "labs" / TUTORIALS[0].name).unlink()
    assert make_labs.main(["--check", "--notebooks", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().err


def _notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    for k, cell in enumerate(nb.cells):
        cell.id = f"c{k}"
    return nb


def test_lab_replaces_the_exercise_and_the_solution_keeps_it():
    tutorial = _notebook("x = 3",
                         "# EXERCISE: the square of x\n#   (an int)\ntmp = x\nsquare = tmp * tmp\n# END EXERCISE\n"
                         "check('sq', square, x=x)",
                         "print(x + 1)")
    lab = make_labs.make_lab(tutorial, "t.ipynb")
    assert lab.cells[0].cell_type == "markdown" and "Lab version" in lab.cells[0].source
    assert lab.cells[2].source == ("# TODO: the square of x\n#       (an int)\nsquare = None  # TODO: your answer\n"
                                   "check('sq', square, x=x)")
    assert lab.cells[1].source == "x = 3" and lab.cells[3].source == "print(x + 1)"
    solution = make_labs.make_solution(tutorial, "t.ipynb")
    assert [c.source for c in solution.cells[1:]] == [c.source for c in tutorial.cells]
    assert "Solutions" in solution.cells[0].source


def test_an_answer_used_outside_check_is_refused():
    bad_later = _notebook("# EXERCISE: y\ny = 1\n# END EXERCISE\ncheck('y', y)", "print(y)")
    with pytest.raises(make_labs.LabError, match="uses 'y'"):
        make_labs.make_lab(bad_later, "t.ipynb")
    helper_used = _notebook("# EXERCISE: y\nh = 2\ny = h\n# END EXERCISE", "z = h + 1")
    with pytest.raises(make_labs.LabError, match="uses 'h'"):
        make_labs.make_lab(helper_used, "t.ipynb")
    reassigned = _notebook("# EXERCISE: y\ny = 1\n# END EXERCISE", "y = 5\nprint(y)")
    make_labs.make_lab(reassigned, "t.ipynb")  # assigned again before use: fine


@pytest.mark.parametrize("source, match", [
    ("# EXERCISE: y\ny = 1", "without '# END EXERCISE'"),
    ("y = 1\n# END EXERCISE", "without '# EXERCISE:'"),
    ("# EXERCISE: y\nprint(1)\n# END EXERCISE", "must assign the answer"),
])
def test_malformed_exercises_are_refused(source, match):
    with pytest.raises(make_labs.LabError, match=match):
        make_labs.make_lab(_notebook(source), "t.ipynb")


def test_solutions_hold_the_tutorials_code(tmp_path):
    assert make_labs.main(["--solutions", str(tmp_path)]) == 0
    for path in TUTORIALS:
        solution = nbformat.read(tmp_path / path.name, as_version=4)
        tutorial = nbformat.read(path, as_version=4)
        assert [c.source for c in solution.cells[1:]] == [c.source for c in tutorial.cells]


# --- execution -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> Path:
    """A Jupyter data folder with one kernelspec that runs this interpreter (not whatever 'python3' is)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "smallct tests", "language": "python"}))
    return root


@pytest.fixture(scope="session")
def solutions_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("solutions")
    assert make_labs.main(["--solutions", str(out)]) == 0
    return out


def _run(path: Path, cwd: Path, monkeypatch, kernel_dir: Path, head_ct: Path | None):
    """Execute ``path`` in a kernel of this interpreter, working folder ``cwd``; returns the notebook."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("IPYTHONDIR", str(cwd / ".ipython"))
    monkeypatch.setenv("SMALLCT_QUICK", "1")
    monkeypatch.setenv("SMALLCT_LABCHECK_STRICT", "1")  # a wrong answer in a tutorial is an error
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # on a shared 2-core machine two threads spin (see conftest)
    if head_ct is None:
        monkeypatch.delenv("SMALLCT_HEAD_CT", raising=False)
    else:
        monkeypatch.setenv("SMALLCT_HEAD_CT", str(head_ct))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, allow_errors=False,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")


def _exercises(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return re.findall(r"""check\(["'](\w+)["']""", "\n".join(c.source for c in nb.cells if c.cell_type == "code"))


@pytest.mark.parametrize("kind", ["tutorial", "solution"])
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_in_quick_mode(name, kind, tmp_path, monkeypatch, kernel_dir, solutions_dir, request):
    path = NOTEBOOKS / f"{name}.ipynb" if kind == "tutorial" else solutions_dir / f"{name}.ipynb"
    head_ct = request.getfixturevalue("head_ct_dir") if name in REAL_DATA else None
    nb = _run(path, tmp_path, monkeypatch, kernel_dir, head_ct)
    printed = _printed(nb)
    exercises = _exercises(path)
    assert exercises, f"{name}: no exercise"
    for exercise in exercises:
        assert f"correct ({exercise})" in printed, f"{name}: the check of {exercise} did not print 'correct'"
    assert "not yet" not in printed
    assert ("the Head CT set in" if head_ct else "SYNTHETIC phantom set") in printed


def test_an_unanswered_lab_runs_and_says_not_yet(tmp_path, monkeypatch, kernel_dir):
    path = NOTEBOOKS / "labs" / "02_preprocessing.ipynb"
    printed = _printed(_run(path, tmp_path, monkeypatch, kernel_dir, None))
    for exercise in _exercises(path):
        assert f"not yet ({exercise})" in printed
    assert "correct (" not in printed
