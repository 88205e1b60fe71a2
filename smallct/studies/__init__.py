"""Studies of small data beyond one cross-validation: few-shot episodes and learning curves.

``fewshot``: :func:`run_fewshot` (episodes of k labelled images per class); ``methods``: the embedding
methods (proto, linear probe, knn, label propagation); ``finetune``: fine-tuning on a few images, shared
by both; ``summary``: means with t intervals over episodes (this pool of images) and bootstrap intervals over
the groups of pooled predictions (which do not narrow with repeats of the same images); ``curve``: :func:`run_curve`.
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.studies.curve": ["CurveResult", "check_sizes", "draw_training_subset", "run_curve", "summarize_curve"],
    "smallct.studies.fewshot": ["FewShotResult", "check_shots", "episode_draws", "episode_rng", "episode_table",
        "run_fewshot", "sample_episode", "summarize_fewshot"],
    "smallct.studies.finetune": ["finetune_predict"],
    "smallct.studies.methods": ["EMBEDDING_METHODS", "NORMALIZATIONS", "TRANSDUCTIVE", "episode_embeddings",
        "label_propagation", "linear_probe", "nearest_neighbours", "nearest_prototype", "normalize_embeddings"],
    "smallct.studies.summary": ["SUMMARY_METRICS", "format_summary", "resampled_figures", "summarize_episodes",
        "summarize_resampled"],
})
