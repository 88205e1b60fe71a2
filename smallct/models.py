"""Model factory: a registry of architecture names, and :func:`create_model`.

``resnet18`` ... ``resnet152`` (and any torchvision classification model) are built by torchvision;
every other name is looked up in timm. The backbone is built with its ImageNet head, the resolved
weights are loaded strictly (every tensor must fit), then the head is replaced by a fresh
``num_classes`` layer.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from smallct.weights import PACKAGED, WeightSource, is_torchvision_arch, map_in_order, read_state_dict

# Architectures named in the docs and tests; any other torchvision or timm name works too.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {}


def register(name: str):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn
    return deco


def _torchvision_builder(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return build


def _timm_builder(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register(_name)(_torchvision_builder(_name))
for _name in PACKAGED:
    register(_name)(_timm_builder(_name))


def builder(arch: str) -> Callable[[int], nn.Module]:
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    if is_torchvision_arch(arch):
        return _torchvision_builder(arch)
    import timm

    if timm.is_model(arch):
        return _timm_builder(arch)
    raise ValueError(f"unknown architecture {arch!r}: use resnet18..resnet152, another torchvision model "
                     "or a timm model name (timm.list_models())")


def head_module(model: nn.Module) -> nn.Module:
    """The final classification layer (replaced for a new task, trained first when freezing)."""
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(model, attr):
            return getattr(model, attr)
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def _final_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Key prefix and module of the layer a new task replaces: the last layer with parameters of the head
    (``fc``; the last Linear of mobilenet/VGG/convnext classifiers, which keep their pretrained layers before
    it; ``heads.head`` of ViT; the final 1x1 convolution of SqueezeNet; timm's classifier)."""
    head = head_module(model)
    prefix = _head_prefix(model)
    leaves = [(name, m) for name, m in head.named_modules()
              if not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False))]
    if not leaves:
        raise ValueError(f"cannot find the final layer of the head of {type(model).__name__}")
    name, layer = leaves[-1]
    return (f"{prefix}{name}." if name else prefix), layer


def _fresh_head(model: nn.Module, layer: nn.Module, num_classes: int) -> None:
    """PyTorch's default initialisation for the final layer (timm: a new classifier, which is the same)."""
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)
    elif hasattr(layer, "reset_parameters"):
        layer.reset_parameters()


def create_model(arch: str, num_classes: int, source: WeightSource) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs, initialised from ``source``.

    For a file source, the file's head is used only when its shape fits ``num_classes`` (a smallct
    checkpoint of the same task); otherwise the backbone is loaded and the head is new.
    """
    build = builder(arch)
    model = build(num_classes)
    if source.kind == "none":
        return model
    state = read_state_dict(source.path)
    if source.key_map == "in-order":
        state = map_in_order(state, build(1000).state_dict(), source.path)
    target = model.state_dict()
    prefix, layer = _final_layer(model)
    head_keys = {k for k in target if k.startswith(prefix)}
    if not all(k in state and state[k].shape == target[k].shape for k in head_keys):
        # ImageNet weights, or a checkpoint of another task: take the backbone and a fresh head with
        # PyTorch's default init. The architecture's own init can be far too large for a few classes:
        # timm's EfficientNet draws a 2-class head from U(-0.71, 0.71), initial logits of std ~5, whose
        # gradients scramble the pretrained features in the first steps.
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        _fresh_head(model, layer, num_classes)
    problems = _check_state(state, target, ignore=head_keys)
    if problems:
        raise ValueError(f"{source.path}: weights do not fit {arch}: {problems}")
    model.load_state_dict(state, strict=False)
    return model


def _head_prefix(model: nn.Module) -> str:
    head = head_module(model)
    for name, module in model.named_modules():
        if module is head:
            return name + "."
    raise ValueError("head not found among modules")


def _check_state(state: dict, target: dict, ignore: set) -> str:
    missing = [k for k in target if k not in state and k not in ignore and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first {unexpected[0]})")
    if wrong:
        parts.append(f"{len(wrong)} tensors of the wrong shape (first {wrong[0]})")
    return "; ".join(parts)


def parameter_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Optimiser groups: the head at ``lr``, the backbone at ``lr * backbone_lr_mult`` (discriminative)."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"},
            {"params": head, "lr": lr, "name": "head"}]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    for p in model.parameters():
        if id(p) not in head_ids:
            p.requires_grad_(trainable)


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
