"""The import paths of smallct 0.1's flat layout, kept working for this release (with a DeprecationWarning).

Until 0.1 every module sat in ``smallct/`` (``smallct.cv``, ``smallct.ingest``, ``smallct.run``, ...). They
now live in subpackages that follow the data's journey. Two kinds of old path keep working:

* the command modules (``smallct.cv``, ``smallct.tune``, ...) are still files, the thin entry points of
  ``python -m smallct.X``; the library names once defined in them (``smallct.cv.run_cv``) are forwarded
  by their module ``__getattr__`` (:func:`forward`);
* the other old modules (``smallct.ingest``, ``smallct.run``, ...) are no files any more: an import hook
  (:func:`install`) serves each as a module that forwards every name to where it lives now.

:data:`MOVED` lists, for each old module, the new modules searched for a name, in order; :data:`RENAMED`
the names that changed. Both go in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    # command modules (files): their library names
    "smallct.cv": ("smallct.engine.cv", "smallct.engine.results", "smallct.engine.estimate",
                   "smallct.engine.run_folder", "smallct.datasets.folder", "smallct.cli.flags", "smallct.io.files",
                   "smallct.config.schema"),
    "smallct.nested": ("smallct.engine.nested", "smallct.config.studies"),
    "smallct.tune": ("smallct.tuning.study", "smallct.tuning.space", "smallct.tuning.storage",
                     "smallct.tuning.report", "smallct.tuning.workers", "smallct.config.studies"),
    "smallct.fewshot": ("smallct.studies.fewshot", "smallct.studies.methods", "smallct.studies.finetune",
                        "smallct.studies.summary", "smallct.evaluation.plots", "smallct.config.studies"),
    "smallct.curve": ("smallct.studies.curve", "smallct.config.studies"),
    "smallct.compare": ("smallct.analysis.compare", "smallct.evaluation.intervals"),
    "smallct.audit": ("smallct.analysis.audit", "smallct.datasets.explore"),
    "smallct.predict": ("smallct.apply.predict",),
    "smallct.explain": ("smallct.apply.explain", "smallct.models.registry"),
    "smallct.export": ("smallct.apply.export",),
    "smallct.prepare": ("smallct.datasets.prepare", "smallct.io.windows"),
    # the Head CT manifest module of 0.1; smallct.data is now the data package, which forwards these names
    "smallct.data": ("smallct.datasets.head_ct",),
    # library modules that are no files any more
    "smallct.ingest": ("smallct.io.images", "smallct.datasets.explore"),
    "smallct.labels": ("smallct.datasets.folder",),
    "smallct.cache": ("smallct.data.cache", "smallct.io.files"),
    "smallct.augment": ("smallct.data.transforms",),
    "smallct.duplicates": ("smallct.data.similar",),
    "smallct.splits": ("smallct.data.folds",),
    "smallct.weights": ("smallct.models.weights", "smallct.models.registry"),
    "smallct.embeddings": ("smallct.models.embeddings", "smallct.models.registry"),
    "smallct.metrics": ("smallct.evaluation.metrics", "smallct.evaluation.intervals"),
    "smallct.plots": ("smallct.evaluation.plots",),
    "smallct.train": ("smallct.engine.train",),
    "smallct.run": ("smallct.engine.run_folder", "smallct.engine.run_models"),
    "smallct.dicom": ("smallct.io.dicom", "smallct.io.windows"),
    "smallct.rsna": ("smallct.datasets.rsna", "smallct.evaluation.multilabel"),
    "smallct.phantom": ("smallct.datasets.phantom",),
    "smallct.synthetic_dicom": ("smallct.datasets.synthetic_dicom",),
    "smallct.labcheck": ("smallct.teaching.labcheck",),
}

RENAMED: dict[str, dict[str, str]] = {
    "smallct.ingest": {"prepare": "smallct.io.images:preprocess"},
    "smallct.cache": {"default_workers": "smallct.parallel:available_cores"},
    "smallct.cv": {"SETTINGS_THAT_CHANGE_RESULTS": "smallct.engine.run_folder:SETTINGS_THAT_CHANGE_RESULTS"},
    "smallct.nested": {"estimate_seconds": "smallct.engine.nested:estimate_nested_seconds"},
    "smallct.tune": {"METRICS": "smallct.tuning.study:OBJECTIVES",
                     "DEFAULT_METRIC": "smallct.tuning.study:DEFAULT_OBJECTIVE"},
    "smallct.fewshot": {"METRICS": "smallct.studies.summary:SUMMARY_METRICS",
                        "finetune_seconds_per_image": "smallct.studies.finetune:seconds_per_image"},
    "smallct.compare": {"METRICS": "smallct.analysis.compare:COMPARED",
                        "load_run": "smallct.analysis.compare:read_predictions"},
    "smallct.predict": {"prepare_inputs": "smallct.apply.predict:model_inputs"},
    "smallct.explain": {"target_layer": "smallct.models.registry:feature_layer"},
    "smallct.weights": {"is_torchvision_arch": "smallct.models.registry:is_torchvision_arch"},
}


# Names whose replacement takes other arguments or returns another thing: an AttributeError says what to use.
CHANGED: dict[str, dict[str, str]] = {
    "smallct.cv": {
        "load_data": "smallct.datasets.folder.load_data(data_config, seed, log) (it took a CVConfig)",
        "make_folds": "smallct.data.folds.make_folds(dataset, folds, repeats, seed, ...) (it returns Folds)",
        "build_run_record": "smallct.engine.run_folder.run_record(..., assignment, similar)",
        "train_fold": "smallct.engine.cv.train_fold(job, repeat, fold, train, test) with a FoldJob",
        "apply_params_file": "smallct.cli.commands.cv.config_from_argv(argv)",
        "build_parser": "smallct.cli.commands.cv.config_from_argv(argv)",
        "config_from_args": "smallct.cli.commands.cv.config_from_argv(argv)",
    },
    "smallct.tune": {
        "setting": "smallct.config.schema.value_of(cfg, name)",
        "with_settings": "smallct.config.schema.build(CVConfig, settings, base=cfg)",
        "build_parser": "smallct.cli.commands.tune.config_from_argv(argv)",
        "config_from_args": "smallct.cli.commands.tune.config_from_argv(argv)",
        "given_flags": "smallct.cli.commands.tune.config_from_argv(argv)",
    },
    "smallct.nested": {"config_from_argv": "smallct.cli.commands.nested.config_from_argv(argv)"},
}


def lookup(old: str, name: str):
    """The object that ``old.name`` was: where it lives now (``AttributeError`` when there is none)."""
    if name.startswith("_"):  # private names, and the probes of IPython and friends (_repr_html_, ...)
        raise AttributeError(name)
    if name in CHANGED.get(old, {}):
        raise AttributeError(f"{old}.{name} of smallct 0.1 changed; use {CHANGED[old][name]}")
    target = RENAMED.get(old, {}).get(name)
    if target is not None:
        module, attribute = target.split(":")
        where = f"{module}.{attribute}"
        value = getattr(importlib.import_module(module), attribute)
    else:
        for module in MOVED[old]:
            value = getattr(importlib.import_module(module), name, _MISSING)
            if value is not _MISSING:
                home = getattr(value, "__module__", None)  # where a function or class is defined, not imported
                module = home if isinstance(home, str) and hasattr(sys.modules.get(home), name) else module
                where = f"{module}.{name}"
                break
        else:
            raise AttributeError(f"module {old!r} has no attribute {name!r} (smallct 0.2 moved its modules into "
                                 f"subpackages: see {', '.join(MOVED[old])})")
    warnings.warn(f"{old}.{name} is now {where}; the old path goes in the next release", DeprecationWarning,
                  stacklevel=3)
    return value


_MISSING = object()


def forward(old: str):
    """A module ``__getattr__`` for a command module: its old library names, from where they live now."""
    def __getattr__(name: str):
        return lookup(old, name)
    return __getattr__


class _Forwarding(types.ModuleType):
    """An old module path that is no file: every attribute is looked up where it lives now."""

    def __getattr__(self, name: str):
        return lookup(self.__name__, name)

    def __dir__(self):
        names = set()
        for module in MOVED[self.__name__]:
            names |= {n for n in dir(importlib.import_module(module)) if not n.startswith("_")}
        return sorted(names | set(RENAMED.get(self.__name__, {})))


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the old module paths that are no files: it is asked last, after the finders of files."""

    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _Forwarding(spec.name, f"Old import path of smallct 0.1: names from {', '.join(MOVED[spec.name])}")

    def exec_module(self, module):
        pass


def install() -> None:
    """Put the old-path finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
