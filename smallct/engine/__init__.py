"""Training and cross-validation: the fit loop, the run folder, cross-validation and nested CV.

``train``: :func:`fit`, :func:`predict_proba`, :func:`resolve_device`; ``run_folder``: :class:`RunFolder`
(names, writes and reads every file of a run); ``run_models``: :func:`load_run` (a run read back, its images
read again), :func:`load_fold_model`; ``results``: the run's tables and pooled figures; ``estimate``: durations;
``cv``: :func:`run_cv`; ``nested``: :func:`run_nested`; ``sequence``: :func:`run_sequence` (a GRU over each series,
on ``stacking``'s out-of-fold per-slice features), :func:`apply_sequence`; ``tracking``: :class:`Tracker`
(TensorBoard and MLflow; ``mlflow_run``: one MLflow run); ``ranks``: :class:`Ranks` (the processes of a torchrun
job: their shards, their shared figures, a failed rank).
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.engine.cv": ["CVResult", "FoldJob", "finish_run", "folds_of", "run_cv", "train_fold", "write_fold"],
    "smallct.engine.estimate": ["estimate_seconds", "fmt_duration", "time_training_step"],
    "smallct.engine.nested": ["add_nested_results", "choose_candidate", "inner_ensemble_proba", "run_nested"],
    "smallct.engine.ranks": ["RankStopped", "Ranks"],
    "smallct.engine.results": ["aggregate_results", "format_table", "oof_table"],
    "smallct.engine.run_folder": ["Checkpoint", "RunFolder", "fold_name", "parse_fold_name", "run_record"],
    "smallct.engine.run_models": ["Run", "load_fold_model", "load_run"],
    "smallct.engine.sequence": ["SequenceConfig", "apply_sequence", "run_sequence"],
    "smallct.engine.stacking": ["SliceFeatures", "feature_matrix", "model_outputs"],
    "smallct.engine.tracking": ["Tracker", "finish_cv", "result_metrics"],
    "smallct.engine.train": ["fit", "lr_factor", "make_optimizer", "predict_proba", "resolve_device"],
})
