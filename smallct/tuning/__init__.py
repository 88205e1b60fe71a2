"""Tuning with Optuna: the search space, the storage, the study and its report, several workers.

``space``: :func:`default_space`, :func:`parse_space`, :func:`suggest`; ``storage``: :func:`make_storage`;
``study``: :func:`run_study`, :func:`open_study`; ``report``: best_params.json, tables and plots;
``workers``: :func:`run_workers` (``--jobs``).
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.tuning.report": ["best_params_record", "summarize", "top_trials", "write_plots", "write_report"],
    "smallct.tuning.space": ["CONDITIONS", "NOT_SEARCHABLE", "NOT_SETTINGS", "cv_settings", "default_space",
        "describe_space", "load_space_file", "parse_search_option", "parse_space", "suggest"],
    "smallct.tuning.storage": ["create_or_load", "default_storage", "make_storage", "masked", "storage_errors",
        "storage_kind"],
    "smallct.tuning.study": ["DEFAULT_OBJECTIVE", "OBJECTIVES", "EpochReporter", "choose_metric",
        "data_fingerprint", "make_objective", "open_study", "run_study"],
    "smallct.tuning.workers": ["run_workers"],
})
