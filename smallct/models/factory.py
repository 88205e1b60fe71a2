"""Model factory: :func:`create_model`, and what training and embedding do with a model's parts.

The backbone is built by its registry entry (:mod:`smallct.models.registry`), the resolved weights
(:mod:`smallct.models.weights`) are loaded strictly (every tensor must fit), and the final layer is
replaced by a fresh ``num_classes`` layer with PyTorch's default initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from smallct.models.registry import feature_layer, get_architecture, head_module
from smallct.models.state_dict import state_problems
from smallct.models.stem import widen_stem
from smallct.models.weights import WeightSource, map_in_order, read_state_dict


def _fresh_head(model: nn.Module, layer: nn.Module, num_classes: int) -> None:
    """PyTorch's default initialisation for the final layer (timm: a new classifier, which is the same)."""
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)
    elif hasattr(layer, "reset_parameters"):
        layer.reset_parameters()


def create_model(arch: str, num_classes: int, source: WeightSource, channels: int = 3) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs, initialised from ``source``, reading ``channels`` input channels.

    For a file source, the file's head is used only when its shape fits ``num_classes`` (a smallct
    checkpoint of the same task); otherwise the backbone is loaded and the head is new. Other than 3 channels (a
    2.5D input), the loaded first convolution is widened by :func:`smallct.models.stem.widen_stem`.
    """
    entry = get_architecture(arch)
    model = entry.build(num_classes)
    if source.kind == "none":
        return widen_stem(model, channels)
    state = read_state_dict(source.path)
    if source.key_map == "in-order":
        state = map_in_order(state, entry.build(1000).state_dict(), source.path)
    target = model.state_dict()
    prefix, layer = entry.final_layer(model)
    head_keys = {k for k in target if k.startswith(prefix)}
    if not all(k in state and state[k].shape == target[k].shape for k in head_keys):
        # ImageNet weights, or a checkpoint of another task: take the backbone and a fresh head with
        # PyTorch's default init. The architecture's own init can be far too large for a few classes:
        # timm's EfficientNet draws a 2-class head from U(-0.71, 0.71), initial logits of std ~5, whose
        # gradients scramble the pretrained features in the first steps.
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        _fresh_head(model, layer, num_classes)
    problems = state_problems(state, target, ignore=head_keys)
    if problems:
        raise ValueError(f"{source.path}: weights do not fit {arch}: {problems}")
    model.load_state_dict(state, strict=False)
    return widen_stem(model, channels)


def parameter_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Optimiser groups: the head at ``lr``, the backbone at ``lr * backbone_lr_mult`` (discriminative)."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"},
            {"params": head, "lr": lr, "name": "head"}]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head.

    A frozen backbone's BatchNorm layers are put in eval mode, so that their running statistics stay as loaded
    (in train mode they would follow the training batches); unfrozen, they follow ``model.training``. Call it
    after ``model.train()``, which would put them back in train mode.
    """
    head = head_module(model)
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        if id(p) not in head_ids:
            p.requires_grad_(trainable)
    head_modules = {id(m) for m in head.modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules:
            m.train(trainable and model.training)


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features (N, D) of a classification model (the input to its head)."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    head = head_module(model)
    feats = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return feats[0].flatten(1)


@torch.no_grad()
def last_feature_map(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """The last (B, C, h, w) feature map before global pooling of a normalised batch ``x``: the output of
    ``layer`` (default :func:`smallct.models.registry.feature_layer`) in a forward pass."""
    layer = layer if layer is not None else feature_layer(model, x.shape[-1])[1]
    maps = []
    hook = layer.register_forward_hook(lambda m, inp, out: maps.append(out))
    try:
        model(x)
    finally:
        hook.remove()
    return maps[-1]
