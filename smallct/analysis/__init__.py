"""Questions asked of finished runs and of the data: is B better than A on the same folds, and does the file
give the label away?

``compare``: :func:`compare_runs` (paired bootstrap, Nadeau-Bengio), :func:`verdict`; ``audit``:
:func:`audit` (the label from metadata alone, under smallct.cv's folds).
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.analysis.audit": ["FEATURE_SETS", "audit_plot", "format_report", "metadata_features",
        "write_audit"],
    "smallct.analysis.compare": ["COMPARED", "RunPredictions", "check_paired", "compare_plot", "compare_runs",
        "read_predictions", "verdict", "write_comparison"],
})
