"""Lazy package exports: a package names its public objects and the modules that hold them, and a module
is imported only when one of its names is first used (PEP 562 ``__getattr__``).

So ``import smallct`` or ``smallct --help`` loads no torch, and ``from smallct.data import make_folds``
imports only what ``make_folds`` needs.
"""

from __future__ import annotations

import importlib


def exports(package: str, modules: dict[str, list[str]], fallback=None):
    """``(__all__, __getattr__, __dir__)`` of ``package`` exporting ``modules`` ({module: [names]}); any other
    name goes to ``fallback(name)`` when given (an old import path, :func:`smallct._legacy.forward`)."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            if fallback is not None:
                return fallback(name)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        globals_of(package)[name] = value  # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals_of(package)) | set(where))

    return list(where), __getattr__, __dir__


def globals_of(package: str) -> dict:
    return vars(importlib.import_module(package))
