"""What figures mean: metrics of predictions, their intervals, the RSNA metric, and plots.

``metrics``: binary and multi-class figures (:func:`counted_figures`: of many bootstrap resamples at once),
:func:`choose_threshold`, :func:`summarize_folds`;
``intervals``: :class:`Units` and :func:`bootstrap_indices` (the one resampler), :func:`pooled_figures`, :func:`t_interval`,
:func:`nadeau_bengio`; ``multilabel``: :func:`weighted_log_loss`, :func:`multilabel_metrics`; ``plots``.
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.evaluation.intervals": ["Units", "as_units", "bootstrap", "bootstrap_ci", "bootstrap_indices",
        "nadeau_bengio", "over_repeats", "percentile_interval", "pooled_figures", "t_interval"],
    "smallct.evaluation.metrics": ["binary_metrics", "choose_threshold", "classification_metrics",
        "counted_figures", "multiclass_metrics", "roc_auc", "summarize_folds"],
    "smallct.evaluation.multilabel": ["f1_at_half", "multilabel_metrics", "per_label_auc", "weighted_log_loss"],
    "smallct.evaluation.plots": ["confusion_plot", "curves_plot", "interval_plot", "roc_plot", "run_figures",
        "save_figure"],
})
