"""Tests of smallct.models.stem: a widened first convolution starts out as the pretrained 3-channel network on a
series of identical slices (both channel recipes of smallct.data.context), and rebuilds from a checkpoint."""

import copy

import numpy as np
import pytest
import torch

from smallct.data.context import Context
from smallct.data.neighbours import Neighbours
from smallct.data.source import MemorySource
from smallct.data.transforms import normalize
from smallct.models.factory import create_model
from smallct.models.stem import first_conv, input_channels, widen_stem
from smallct.models.weights import resolve_weights

WINDOWS = ("brain", "subdural", "bone")


def identical_series(n: int = 4, size: int = 32) -> tuple[MemorySource, Neighbours]:
    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1, 3, size, size), generator=g, dtype=torch.uint8)
    rows = np.arange(n)
    return MemorySource(one.expand(n, 3, size, size).contiguous()), Neighbours(np.maximum(rows - 1, 0),
                                                                               np.minimum(rows + 1, n - 1))


@pytest.mark.parametrize("k, channels", [(1, "all"), (2, "all"), (2, "window"), (1, "window")])
def test_widened_network_starts_as_the_single_slice_one(k, channels):
    source = resolve_weights("tf_efficientnet_lite0", "imagenet")  # packaged: pretrained, offline
    torch.manual_seed(0)
    single = create_model("tf_efficientnet_lite0", 6, source).eval()
    ctx = Context(k, channels, "subdural", WINDOWS)
    torch.manual_seed(0)  # the same fresh head
    wide = create_model("tf_efficientnet_lite0", 6, source, ctx.n_channels).eval()
    assert input_channels(wide) == ctx.n_channels
    slices, links = identical_series()
    x = ctx.source(slices, links).read([1, 2])
    one = slices.read([1, 2])
    if channels == "window":  # the single-slice network sees the chosen window as a grey image
        one = one[:, 1:2].expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = single(normalize(one, source.mean, source.std))
        got = wide(normalize(x, ctx.stats(source.mean), ctx.stats(source.std)))
    assert torch.allclose(got, expected, atol=1e-4)


def test_widen_refuses_a_widened_stem_and_keeps_three():
    model = create_model("resnet18", 2, resolve_weights("resnet18", "none"))
    assert widen_stem(model, 3) is model and input_channels(model) == 3
    widen_stem(model, 5)
    assert first_conv(model)[0] == "conv1" and input_channels(model) == 5
    with pytest.raises(ValueError, match="reads 5 channels, not 3"):
        widen_stem(copy.deepcopy(model), 7)
