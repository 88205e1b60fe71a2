"""Tests of smallct.data.context: each slice gathered with its neighbours (both channel recipes), in batches as
when read one by one, the ImageNet statistics spread over the channels, and the random reversal of the slice order."""

import numpy as np
import pytest
import torch

from smallct.data.context import Context, ContextSource, reverse_neighbours
from smallct.data.neighbours import Neighbours
from smallct.data.source import MemorySource

WINDOWS = ("brain", "subdural", "bone")


def slices(n: int = 5, size: int = 4) -> MemorySource:
    """Slice i's channel c is the constant 10 * i + c: every gathered value names its slice and window."""
    values = (10 * torch.arange(n).view(-1, 1) + torch.arange(3).view(1, -1)).to(torch.uint8)
    return MemorySource(values.view(n, 3, 1, 1).expand(n, 3, size, size).contiguous())


# series 0 -> 1 -> 2 and 3 -> 4
LINKS = Neighbours(np.array([0, 0, 1, 3, 3]), np.array([1, 2, 2, 4, 4]))


def test_window_recipe_gathers_one_window_of_each_neighbour():
    ctx = Context(1, "window", "subdural", WINDOWS)
    src = ctx.source(slices(), LINKS)
    assert src.shape == (5, 3, 4, 4) and src.slice_channels == 1
    x = src.read([0, 2, 4])
    # channel j is slice j - 1, in window 1 (subdural); the slice itself beyond an end
    assert x[:, :, 0, 0].tolist() == [[1, 1, 11], [11, 21, 21], [31, 41, 41]]
    assert ctx.order() == ["slice-1 subdural", "slice subdural", "slice+1 subdural"]


def test_all_recipe_gives_every_window_of_every_neighbour():
    ctx = Context(2, "all", "brain", WINDOWS)
    src = ctx.source(slices(), LINKS)
    assert src.shape == (5, 15, 4, 4) and src.slice_channels == 3 and ctx.n_channels == 15
    row = src.read([1])[0, :, 0, 0].tolist()
    assert row == [0, 1, 2, 0, 1, 2, 10, 11, 12, 20, 21, 22, 20, 21, 22]  # slices 0, 0, 1, 2, 2
    assert ctx.order()[:4] == ["slice-2 brain", "slice-2 subdural", "slice-2 bone", "slice-1 brain"]


def test_batches_equal_reads_and_subsets_keep_the_channels():
    src = Context(1, "window", "brain", WINDOWS).source(slices(), LINKS)
    lists = [[4, 0], [2], [1, 3, 3]]
    for index, batch in zip(lists, src.batches(lists)):
        assert torch.equal(batch, src.read(index))
    part = src.take([2, 3])
    assert part.slice_channels == 1 and torch.equal(part.read([1, 0]), src.read([3, 2]))


def test_statistics_follow_channel_mod_three():
    ctx = Context(2, "window", "brain", WINDOWS)
    assert ctx.stats((0.1, 0.2, 0.3)) == (0.1, 0.2, 0.3, 0.1, 0.2)
    assert Context.from_record(ctx.record()) == ctx and Context.from_record(None) is None


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="--context-window soft: the prepared slices hold the windows brain"):
        Context(1, "window", "soft", WINDOWS)
    with pytest.raises(ValueError, match="no series order"):
        Context(1).source(slices(), None, "DIR")
    with pytest.raises(ValueError, match="--context 0"):
        Context(0)


def test_reversal_flips_whole_slices_of_about_half_the_inputs():
    x = torch.arange(4 * 9, dtype=torch.float32).view(4, 9, 1, 1).repeat(50, 1, 1, 1)  # 200 inputs, 3 slices x 3
    out = reverse_neighbours(x, 3, torch.Generator().manual_seed(0))
    flipped = (out != x).flatten(1).any(1)
    assert 70 < flipped.sum() < 130
    grouped, back = x[flipped].view(-1, 3, 3), out[flipped].view(-1, 3, 3)
    assert torch.equal(back, grouped.flip(1))  # slices reversed, each slice's three windows kept in order
    assert torch.equal(out[~flipped], x[~flipped])
