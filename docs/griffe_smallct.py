"""Griffe extension of the API pages (mkdocs.yml loads it): smallct's own conventions, read as they are.

- **Public names.** A subpackage's ``__init__`` lists its public names per module, either in the lazy
  ``exports(__name__, {"smallct.pkg.mod": [names]})`` table (:mod:`smallct._lazy`) or as imports plus a static
  ``__all__`` (``smallct.config``). Griffe sees neither as a module's ``__all__``, so each module would show
  every name without an underscore. Here each listed module gets those names (and its namesake function) as its
  exports, so the API pages (``filters: public``) show what the package says is public, each once, under the
  module that defines it.
- **Sphinx roles.** The docstrings cross-reference with reST roles (``:func:`fit```, ``:class:`~a.B```);
  Markdown shows them as code (``fit``, ``B``), the text a reader of the source sees.
"""

from __future__ import annotations

import ast
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rpartition('.')[2] if short else target}`"


def _lazy_table(source: str) -> dict[str, list[str]]:
    """The ``{module: [names]}`` table of an ``exports(__name__, {...})`` call in an ``__init__``'s source."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "exports" and len(node.args) > 1
                and isinstance(node.args[1], ast.Dict)):
            return ast.literal_eval(node.args[1])
    return {}


class SmallctConventions(griffe.Extension):
    """Exports from the packages' ``__init__`` tables; reST roles as Markdown code."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for package in _packages(pkg):
            if "__main__" in package.modules:  # ``python -m smallct.pkg``: a command, not a library module
                package.modules["__main__"].public = False
            table = _lazy_table(package.source) if package.filepath else {}
            if not table and package.exports:  # imports plus a static __all__: the names go to their modules
                for name in package.exports:
                    member = package.members.get(str(name))
                    if member is not None and member.is_alias:
                        table.setdefault(member.target_path.rpartition(".")[0], []).append(str(name))
                        member.public = False  # shown once, under its module
            for module_path, names in table.items():
                module = _module(pkg, module_path)
                if module is not None:
                    # a module's namesake (``apply.predict.predict``, ``analysis.audit.audit``) is public even
                    # where the package cannot re-export it under that name
                    own = module.members.get(module.name)
                    namesake = [module.name] if own is not None and not own.is_alias else []
                    module.exports = sorted(set(module.exports or []) | set(names) | set(namesake))

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)


def _module(pkg: griffe.Module, path: str) -> griffe.Module | None:
    """The module at dotted ``path`` under ``pkg``, or None."""
    if not path.startswith(pkg.path + "."):
        return None
    try:
        module = pkg[path[len(pkg.path) + 1:]]
    except KeyError:
        return None
    return module if module.is_module and not module.is_alias else None


def _packages(pkg: griffe.Module):
    """``pkg``'s subpackages (not the root: its lazy table is a selection across modules), at every depth."""
    for member in pkg.modules.values():
        if member.is_subpackage and not member.is_alias:
            yield member
            yield from _packages(member)
