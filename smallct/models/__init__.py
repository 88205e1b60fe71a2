"""Models: the architecture registry, where weights come from, the model factory and frozen embeddings.

``registry``: :class:`Architecture` entries (builder, packaged weights, final layer, last feature map),
:func:`get_architecture`, :func:`register_weights` (a URL and SHA-256); ``weights``: :func:`resolve_weights` (a
:class:`WeightSource` with mean, std and input size, downloaded into the libraries' caches on first use);
``factory``: :func:`create_model`, parameter groups, freezing, penultimate features; ``embeddings``:
:func:`load_embeddings`, computed once and cached; ``sequence``: :class:`SeriesGRU`, a bidirectional GRU over
the slices of a series.
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.models.embeddings": ["POOLINGS", "compute_embeddings", "load_embeddings"],
    "smallct.models.factory": ["create_model", "embed", "last_feature_map", "parameter_groups",
        "set_backbone_trainable"],
    "smallct.models.sequence": ["SeriesGRU", "chain_probs"],
    "smallct.models.registry": ["ARCHITECTURES", "Architecture", "PackagedWeights", "URL_WEIGHTS", "UrlWeights",
        "builder", "feature_layer", "final_layer", "get_architecture", "head_module", "register", "register_weights"],
    "smallct.models.weights": ["PACKAGED", "WeightSource", "WeightsUnavailable", "hub_checkpoint_dir", "map_in_order",
        "offline_reason", "read_state_dict", "resolve_weights"],
})
