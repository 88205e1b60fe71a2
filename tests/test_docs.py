"""The documentation: the README is a first screen (the three commands near the top, short, its links resolve) and
the MkDocs site (mkdocs.yml, docs/) builds in strict mode, so a broken link, anchor or API reference fails CI."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST_SCREEN = 40  # lines a newcomer reads before scrolling
MAX_README_LINES = 200  # the rest lives in docs/ (0.3.0's README was 802 lines)
INSTALL = 'pip install -e ".[dev,notebooks,weights]"'


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_first_screen_holds_the_three_commands():
    # Mutant caught: the commands moved below the fold (or out of the ```bash block), or one of them dropped.
    first = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN])
    blocks = _bash_blocks(first + "\n```\n")  # a block cut by the screen's edge still counts up to the edge
    commands = [line.strip() for block in blocks for line in block.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert INSTALL in commands, f"README's first {FIRST_SCREEN} lines: no {INSTALL!r} in a ```bash block"
    assert any(c.startswith("python -m smallct.cv ") for c in commands), "no `python -m smallct.cv ...` main job"
    assert "python -m pytest" in commands, "no `python -m pytest` test command"


def test_readme_is_short():
    # Fails on 0.3.0 (802 lines): the manual moved to docs/.
    n = len(README.read_text().splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; keep a first visit's page, move the rest to docs/"


def test_readme_install_command_is_the_one_ci_runs():
    # Mutant caught: the README's install command and .ci/run's drifting apart (new extra in one only).
    ci = (ROOT / ".ci" / "run").read_text()
    assert INSTALL in ci, f".ci/run no longer runs the README's install command {INSTALL!r}"


def test_readme_links_resolve():
    # mkdocs checks the links of docs/, not the README's: a renamed docs page or notebook must not leave
    # a dead link on the project's front page.
    text = README.read_text()
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t and not t.startswith("#")]
    assert targets, "README links no docs page"
    missing = [t for t in targets if not (ROOT / t.partition("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in {t.partition("#")[0] for t in targets if t.startswith("docs/") and t.endswith(".md")}:
        assert page.removeprefix("docs/") in nav, f"{page} is linked from the README but not in mkdocs.yml's nav"


def test_docs_build_strict(tmp_path):
    # A broken link, a missing anchor, an API page naming a module that is gone, or a docstring Griffe cannot
    # parse is a warning, and --strict turns every warning into a failed build.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0, not about these docs
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"python -m mkdocs build --strict failed (MkDocs comes with the dev extra):\n{output}"
    assert "WARNING" not in output, output
    print(f"mkdocs build --strict: {seconds:.1f} s")
    # The API pages show what a package's __init__ lists as public, per module (docs/griffe_smallct.py): without
    # the extension every helper of smallct.engine.cv would be shown; with a wrong filter, none.
    engine = (tmp_path / "api" / "engine" / "index.html").read_text()
    shown = set(re.findall(r'id="smallct\.engine\.cv\.(\w+)"', engine))
    assert shown == set(_lazy_table(ROOT / "smallct" / "engine" / "__init__.py")["smallct.engine.cv"])
    assert not re.search(r":(func|class|mod|meth|data|attr):<code>", engine), "a reST role reached the page"


def _lazy_table(init: Path) -> dict[str, list[str]]:
    """The ``{module: [names]}`` table of the ``exports(__name__, {...})`` call in a package's ``__init__``."""
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "exports":
            return ast.literal_eval(node.args[1])
    raise AssertionError(f"{init}: no exports(__name__, {{...}}) table")
