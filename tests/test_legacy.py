"""The import paths of smallct 0.1 still work for this release: the same objects, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings

import pytest

from smallct import _legacy

# (old path, name, new path, new name): the names the README and the notebooks of 0.1 used, and the renamed ones
USED = [
    ("smallct.cv", "run_cv", "smallct.engine.cv", "run_cv"),
    ("smallct.cv", "estimate_seconds", "smallct.engine.estimate", "estimate_seconds"),
    ("smallct.cv", "phantom_dataset", "smallct.datasets.folder", "phantom_dataset"),
    ("smallct.run", "load_run", "smallct.engine.run_models", "load_run"),
    ("smallct.run", "load_fold_model", "smallct.engine.run_models", "load_fold_model"),
    ("smallct.predict", "predict", "smallct.apply.predict", "predict"),
    ("smallct.predict", "prepare_inputs", "smallct.apply.predict", "model_inputs"),
    ("smallct.explain", "grad_cam", "smallct.apply.explain", "grad_cam"),
    ("smallct.explain", "target_layer", "smallct.models.registry", "feature_layer"),
    ("smallct.export", "export_run", "smallct.apply.export", "export_run"),
    ("smallct.ingest", "prepare", "smallct.io.images", "preprocess"),
    ("smallct.ingest", "to_rgb_uint8", "smallct.io.images", "to_rgb_uint8"),
    ("smallct.ingest", "describe", "smallct.datasets.explore", "describe"),
    ("smallct.dicom", "window", "smallct.io.windows", "window"),
    ("smallct.dicom", "to_rgb", "smallct.io.dicom", "to_rgb"),
    ("smallct.labels", "load_dataset", "smallct.datasets.folder", "load_dataset"),
    ("smallct.cache", "load_images", "smallct.data.cache", "load_images"),
    ("smallct.cache", "cache_dir", "smallct.io.files", "cache_dir"),
    ("smallct.metrics", "bootstrap_ci", "smallct.evaluation.intervals", "bootstrap_ci"),
    ("smallct.rsna", "weighted_log_loss", "smallct.evaluation.multilabel", "weighted_log_loss"),
    ("smallct.rsna", "read_rsna_labels", "smallct.datasets.rsna", "read_rsna_labels"),
    ("smallct.tune", "TuneConfig", "smallct.config.studies", "TuneConfig"),
    ("smallct.tune", "top_trials", "smallct.tuning.report", "top_trials"),
    ("smallct.compare", "compare_runs", "smallct.analysis.compare", "compare_runs"),
    ("smallct.fewshot", "FewShotConfig", "smallct.config.studies", "FewShotConfig"),
    ("smallct.labcheck", "check", "smallct.teaching.labcheck", "check"),
]


@pytest.mark.parametrize("old, name, new, new_name", USED)
def test_old_path_gives_the_same_object_and_warns(old, name, new, new_name):
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} is now {new}.{new_name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), new_name)


def test_from_import_of_an_old_module_path_works():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning):
            importlib.import_module("smallct.labels").read_csv_labels
    with pytest.warns(DeprecationWarning):
        from smallct.labels import load_dataset
    from smallct.datasets.folder import load_dataset as now
    assert load_dataset is now


def test_an_unknown_old_name_says_where_to_look():
    with pytest.raises(AttributeError, match=r"smallct.ingest.*no attribute 'nothing'.*smallct.io.images"):
        importlib.import_module("smallct.ingest").nothing


def test_every_target_exists():
    for old, targets in _legacy.MOVED.items():
        for module in targets:
            importlib.import_module(module)
    for old, names in _legacy.RENAMED.items():
        for target in names.values():
            module, attribute = target.split(":")
            assert hasattr(importlib.import_module(module), attribute), target


def test_changed_names_say_what_to_use_instead():
    with pytest.raises(AttributeError, match=r"smallct.cv.load_data of smallct 0.1 changed; use "
                                             r"smallct.datasets.folder.load_data\(data_config, seed, log\)"):
        importlib.import_module("smallct.cv").load_data
    with pytest.raises(AttributeError):
        importlib.import_module("smallct.ingest")._repr_html_  # IPython's probes import nothing


def test_the_old_head_ct_manifest_names_of_smallct_data():
    from smallct.datasets import head_ct

    with pytest.warns(DeprecationWarning, match="smallct.data.verify is now smallct.datasets.head_ct.verify"):
        from smallct.data import verify
    assert verify is head_ct.verify
