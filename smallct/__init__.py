"""smallct: deep learning on small medical imaging data sets (head CT first).

The package follows the data's journey: ``io`` (files to arrays) -> ``datasets`` (labelled sets from disk)
-> ``data`` (cache, transforms, near-duplicates, folds) -> ``models`` -> ``engine`` (training, the run
folder, cross-validation) -> ``evaluation`` (metrics, intervals, plots) -> ``tuning`` -> ``studies``
(few-shot, learning curves) -> ``analysis`` (comparison, shortcut audit) -> ``apply`` (predict, explain,
export) -> ``cli``. Settings are ``config``. The names below are the entry points a notebook needs; they
are imported on first use, so ``import smallct`` (and ``smallct --help``) loads no torch.
"""

from smallct import _legacy
from smallct._lazy import exports

__version__ = "0.7.0"

_names, __getattr__, __dir__ = exports(__name__, {
    "smallct.config": ["CVConfig", "DataConfig", "TrainConfig", "NestedConfig", "TuneConfig", "FewShotConfig",
                       "CurveConfig"],
    "smallct.io.images": ["to_rgb_uint8", "preprocess"],
    "smallct.io.dicom": ["read_hu", "to_rgb"],
    "smallct.io.windows": ["window", "WINDOWS"],
    "smallct.datasets.explore": ["describe"],
    "smallct.datasets.folder": ["load_dataset"],
    "smallct.data.cache": ["load_images"],
    "smallct.data.folds": ["make_folds"],
    "smallct.models.factory": ["create_model"],
    "smallct.models.weights": ["resolve_weights"],
    "smallct.engine.cv": ["run_cv"],
    "smallct.engine.nested": ["run_nested"],
    "smallct.engine.run_models": ["load_run", "load_fold_model"],
    "smallct.tuning.study": ["run_study"],
    "smallct.studies.fewshot": ["run_fewshot"],
    "smallct.studies.curve": ["run_curve"],
    "smallct.analysis.compare": ["compare_runs"],
    "smallct.apply.explain": ["grad_cam"],
    "smallct.apply.export": ["export_run"],
})
__all__ = [*_names, "__version__"]

_legacy.install()
