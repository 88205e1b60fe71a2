"""A pretrained network's first convolution widened from 3 input channels to any number (2.5D input).

:func:`widen_stem` gives input channel ``j`` an equal share of pretrained channel ``j mod 3``'s weights (with the
input normalised by that channel's statistic, :meth:`smallct.data.context.Context.stats`): fed C channels that
repeat one 3-channel image's channels in that pattern (a series of identical slices), the widened network computes
what the 3-channel one computes on the image. timm's ``in_chans`` adaptation (weights repeated and scaled by 3/C)
does not keep that.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The name and module of the first convolution (in module order): the one that reads the input."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__}: no convolution reads the input; --context needs one to widen")


def input_channels(model: nn.Module) -> int:
    """The channels a model's input has (3, or a 2.5D input's)."""
    return first_conv(model)[1].in_channels


def widen_stem(model: nn.Module, channels: int) -> nn.Module:
    """``model`` (in place) reading ``channels`` input channels instead of 3; returns it."""
    if channels == 3:
        return model
    name, conv = first_conv(model)
    if conv.in_channels != 3:
        raise ValueError(f"{name}: the first convolution reads {conv.in_channels} channels, not 3; cannot widen it")
    if conv.groups != 1:
        raise ValueError(f"{name}: a grouped first convolution cannot be widened to {channels} channels")
    # a copy keeps the convolution's own class (timm's TF ports pad "same" in their forward), only wider
    wider = copy.deepcopy(conv)
    source = torch.arange(channels) % 3  # input channel j takes pretrained channel j mod 3 ...
    share = torch.bincount(source, minlength=3).clamp(min=1)[source]  # ... split evenly among those that take it
    with torch.no_grad():
        wider.weight = nn.Parameter(conv.weight[:, source] / share.view(1, -1, 1, 1).to(conv.weight.dtype))
    wider.in_channels = channels
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, wider)
    return model
