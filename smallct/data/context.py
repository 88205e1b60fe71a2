"""2.5D input: each slice with the ``K`` slices on each side of it in its series, as channels (``--context K``).

The 1st place of RSNA 2019 fed slices i-1, i, i+1, each in the brain window, as the three channels of an ImageNet
network. :class:`Context` is that recipe and its variants, and :meth:`Context.source` the batch source that gathers
them from the one per-slice cache through :class:`smallct.data.neighbours.Neighbours` (no second, stacked copy of the
set; the slice itself stands in beyond a series end or a reported gap).

Channel recipes (``--context-channels``):

* ``window``: the 2K+1 slices, each in one window of the prepared set (``--context-window``, default brain);
  channel ``j`` is slice ``j - K`` (so K = 1 gives three channels: the ImageNet stem as it is).
* ``all``: every window of every slice: 3 x (2K+1) channels, slice by slice (channels ``3s..3s+2`` are slice
  ``s - K``'s three windows).

Channel ``j`` of either recipe is normalised with the ImageNet statistic of channel ``j mod 3``
(:meth:`Context.stats`), and :func:`smallct.models.stem.widen_stem` gives it an equal share of that channel's
pretrained first-layer weights: on a series of identical slices the network starts out as the single-slice one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from smallct.data.neighbours import Neighbours
from smallct.data.source import BatchSource, as_index

CHANNEL_RECIPES = ("window", "all")


@dataclass(frozen=True)
class Context:
    """How many neighbours on each side (``k``), which channels (``channels``) and, for ``window``, which of the
    per-slice windows (``window``, one of ``windows``, the prepared set's three)."""

    k: int
    channels: str = "window"
    window: str = "brain"
    windows: tuple[str, ...] = ("brain", "subdural", "bone")

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--context {self.k}: expected 1 or more neighbours on each side (0: no context)")
        if self.channels not in CHANNEL_RECIPES:
            raise ValueError(f"--context-channels {self.channels}: expected one of {', '.join(CHANNEL_RECIPES)}")
        if self.channels == "window" and self.window not in self.windows:
            raise ValueError(f"--context-window {self.window}: the prepared slices hold the windows "
                             f"{', '.join(map(str, self.windows))}; choose one of them (or prepare the set again "
                             "with --windows)")

    @property
    def slice_channels(self) -> int:
        """Channels each slice gives: 1 (``window``) or 3 (``all``)."""
        return 1 if self.channels == "window" else 3

    @property
    def n_channels(self) -> int:
        return (2 * self.k + 1) * self.slice_channels

    def order(self) -> list[str]:
        """The name of each input channel, e.g. ``slice-1 brain``, ``slice brain``, ``slice+1 brain``."""
        names = [self.window] if self.channels == "window" else list(self.windows)
        return [f"slice{'' if s == 0 else f'{s:+d}'} {w}" for s in range(-self.k, self.k + 1) for w in names]

    def stats(self, values) -> tuple[float, ...]:
        """A per-channel statistic (mean or std) of the 3 ImageNet channels, spread over the input channels."""
        values = tuple(float(v) for v in values)
        return tuple(values[j % 3] for j in range(self.n_channels))

    def record(self) -> dict:
        """What run.json and a checkpoint record: enough to rebuild the input (:meth:`from_record`)."""
        return {"k": self.k, "channels": self.channels, "window": self.window, "windows": list(self.windows),
                "n_channels": self.n_channels, "order": self.order()}

    @classmethod
    def from_record(cls, record: dict | None) -> "Context | None":
        if not record:
            return None
        return cls(int(record["k"]), record["channels"], record["window"], tuple(record["windows"]))

    def source(self, images: BatchSource, neighbours: Neighbours | None, where: str = "the data") -> "ContextSource":
        """The 2.5D input of every slice of ``images`` (a per-slice source), its neighbours from ``neighbours``."""
        check_series(self.k, neighbours, len(images), where)
        channel = self.windows.index(self.window) if self.channels == "window" else None
        return ContextSource(images, neighbours.offsets(self.k), channel)


def check_series(k: int, neighbours: Neighbours | None, n: int, where: str = "the data") -> None:
    """Refuse, in one line, ``--context k`` on images without a series order (or without ``n`` links of it)."""
    if neighbours is None:
        raise ValueError(f"--context {k}: {where} has no series order (prev/next); --context needs slices "
                         "prepared from DICOM by smallct.prepare rsna (or a DICOM folder to predict)")
    if len(neighbours) != n:
        raise ValueError(f"--context {k}: {len(neighbours)} neighbour links for {n} images of {where}")


class ContextSource(BatchSource):
    """Rows of a per-slice source gathered with their neighbours: (N, C, S, S) uint8, C as :class:`Context` says.

    ``rows`` (N, 2K+1): the per-slice rows of each input, in channel order; ``channel``: the one per-slice channel
    taken from each (``window``), or None for all three.
    """

    def __init__(self, parent: BatchSource, rows: np.ndarray, channel: int | None):
        self.parent, self.rows, self.channel = parent, np.asarray(rows, dtype=np.int64), channel
        self.slice_channels = 1 if channel is not None else 3
        side = parent.shape[2:]
        self.shape = (len(self.rows), self.rows.shape[1] * self.slice_channels, *side)

    def _stack(self, x: torch.Tensor, b: int) -> torch.Tensor:
        if self.channel is not None:
            x = x[:, self.channel]
        return x.reshape(b, -1, *x.shape[-2:])

    def read(self, index) -> torch.Tensor:
        index = as_index(index, len(self))
        return self._stack(self.parent.read(self.rows[index].ravel()), len(index))

    def batches(self, index_lists, device=None):
        sizes: deque[int] = deque()  # filled as the parent reads ahead, emptied in the same order

        def rows():
            for index in index_lists:
                index = as_index(index, len(self))
                sizes.append(len(index))
                yield self.rows[index].ravel()

        inner = self.parent.batches(rows(), device)
        try:
            for x in inner:
                yield self._stack(x, sizes.popleft())
        finally:
            inner.close()


def reverse_neighbours(x: torch.Tensor, slice_channels: int, generator: torch.Generator) -> torch.Tensor:
    """Reverse the slice order of each 2.5D input (B, C, H, W) with probability 1/2 (training augmentation: a
    series read head to foot or foot to head); ``slice_channels`` channels per slice stay together."""
    b = x.shape[0]
    flip = (torch.rand(b, generator=generator, device=generator.device) < 0.5).to(x.device)
    grouped = x.reshape(b, -1, slice_channels, *x.shape[-2:])
    return torch.where(flip.view(-1, 1, 1, 1, 1), grouped.flip(1), grouped).reshape(x.shape)
