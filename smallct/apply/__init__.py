"""Applying finished runs to new images: prediction, Grad-CAM explanations and export.

``predict``: :func:`~smallct.apply.predict.predict` (the fold models of one or more runs, averaged; not
re-exported here, its module has its name), :func:`model_inputs` (files to
a run's model input); ``submission``: :func:`rsna_submission` (a row for every image); ``explain``:
:func:`grad_cam`, :func:`explain_oof`,
:func:`explain_images`; ``export``: :func:`export_run` (ONNX or TorchScript, normalisation inside).
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.apply.explain": ["cam_figure", "explain_images", "explain_oof", "grad_cam", "is_constant",
        "write_explanations"],
    "smallct.apply.export": ["Deployable", "contract_path", "deployable", "export_module", "export_run",
        "read_contract", "run_exported"],
    "smallct.apply.predict": ["Unreadable", "check_compatible", "find_inputs", "fold_probabilities", "image_ids",
        "load_models", "model_inputs", "probability_columns", "select_checkpoints"],
    "smallct.apply.submission": ["fill_unreadable", "label_rates", "report_unreadable", "rsna_submission"],
})
