"""The slices beside each slice of a set: :class:`Neighbours`, one owner of "series" once the rows are read.

:mod:`smallct.io.series` orders the slices of each series and links each to the one before and after it
(``prev`` / ``next`` in a prepared RSNA manifest: a slice is its own neighbour at a series end and across a gap).
This module holds those links over the rows of a :class:`smallct.datasets.folder.Dataset` and answers what 2.5D
input, series smoothing and the sequence model ask of them:

* :meth:`Neighbours.offsets`: the rows ``-K..+K`` slices away (2.5D input, :mod:`smallct.data.context`); the slice
  itself stands in beyond an end or a gap.
* :meth:`Neighbours.chains`: the runs of linked slices, each in series order (a series, or a piece of one between
  gaps): what a sequence model reads and what smoothing never crosses.
* :meth:`Neighbours.smooth`: a centred rolling mean over each chain.
* :meth:`Neighbours.take`: the links among some rows only (a fold, a subset); a link to a row left out ends the
  chain there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Neighbours:
    """``prev[i]`` and ``next[i]``: the rows of the slices before and after row ``i`` in its series (``i`` itself at
    an end or a gap). Checked on creation: rows in range, and each link answered (``next[prev[i]] == i``)."""

    prev: np.ndarray
    next: np.ndarray

    def __post_init__(self):
        prev, nxt = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (self.prev, self.next))
        object.__setattr__(self, "prev", prev)
        object.__setattr__(self, "next", nxt)
        problem = link_problem(prev, nxt)
        if problem:
            raise ValueError(problem)

    def __len__(self) -> int:
        return len(self.prev)

    @classmethod
    def alone(cls, n: int) -> "Neighbours":
        """``n`` slices, each its own neighbour (images that are not in a series)."""
        rows = np.arange(n)
        return cls(rows, rows.copy())

    def step(self, k: int) -> np.ndarray:
        """The row ``k`` slices away from each row (negative: before), stopping at an end or a gap."""
        rows = np.arange(len(self))
        link = self.prev if k < 0 else self.next
        for _ in range(abs(k)):
            rows = link[rows]
        return rows

    def offsets(self, k: int) -> np.ndarray:
        """(N, 2k+1) rows: for each row, the slices ``-k..+k`` away in series order (the row itself in column k)."""
        return np.stack([self.step(j) for j in range(-k, k + 1)], axis=1)

    def chains(self) -> list[np.ndarray]:
        """Each run of linked rows, in series order; the runs in the order of their first row."""
        starts = np.flatnonzero(self.prev == np.arange(len(self)))
        out = []
        for start in starts:
            chain = [start]
            while self.next[chain[-1]] != chain[-1]:
                chain.append(self.next[chain[-1]])
            out.append(np.asarray(chain, dtype=np.int64))
        if sum(len(c) for c in out) != len(self):
            raise ValueError("prev/next links form a loop: a series has no first slice")
        return out

    def chain_of(self) -> np.ndarray:
        """(N,) the number of each row's chain (:meth:`chains` order)."""
        out = np.empty(len(self), dtype=np.int64)
        for c, chain in enumerate(self.chains()):
            out[chain] = c
        return out

    def smooth(self, values: np.ndarray, n: int) -> np.ndarray:
        """A centred rolling mean of ``values`` (N,) or (N, C) over ``n`` slices (odd) of each chain, never across a
        gap or a series' end (the window is cut short there: the mean of the slices it holds)."""
        if n < 1 or n % 2 == 0:
            raise ValueError(f"--smooth {n}: expected an odd number of slices (1: none, 3: a slice and its two "
                             "neighbours)")
        values = np.asarray(values, dtype=np.float64)
        if len(values) != len(self):  # rows beyond the links would come back uninitialised (np.empty)
            raise ValueError(f"--smooth {n}: {len(values)} rows of probabilities for {len(self)} linked slices")
        if n == 1:
            return values.copy()
        out = np.empty_like(values)
        half = n // 2
        for chain in self.chains():
            v = values[chain]
            total = np.cumsum(np.concatenate([np.zeros((1, *v.shape[1:])), v]), axis=0)
            lo = np.clip(np.arange(len(chain)) - half, 0, len(chain))
            hi = np.clip(np.arange(len(chain)) + half + 1, 0, len(chain))
            count = (hi - lo).reshape(-1, *([1] * (v.ndim - 1)))
            out[chain] = (total[hi] - total[lo]) / count
        return out

    def take(self, index) -> "Neighbours":
        """The links among rows ``index`` only, renumbered (row i is ``index[i]``); a link to a row not taken, or a
        row taken twice, ends the chain there."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        where = np.full(len(self), -1, dtype=np.int64)
        counts = np.bincount(index, minlength=len(self))
        where[index] = np.arange(len(index))
        where[counts > 1] = -1  # a repeated row has no single place: it is alone
        rows = np.arange(len(index))

        def relink(link):
            target = where[link[index]]
            return np.where((target >= 0) & (counts[index] == 1), target, rows)

        prev, nxt = relink(self.prev), relink(self.next)
        # a link kept one way but not the other (its partner repeated or absent) is cut both ways
        prev = np.where(nxt[prev] == rows, prev, rows)
        nxt = np.where(prev[nxt] == rows, nxt, rows)
        return Neighbours(prev, nxt)


def link_problem(prev: np.ndarray, nxt: np.ndarray) -> str | None:
    """What is wrong with ``prev`` / ``next`` links, in words, or None."""
    n = len(prev)
    if len(nxt) != n:
        return f"{n} prev links but {len(nxt)} next links"
    for name, link in (("prev", prev), ("next", nxt)):
        bad = np.flatnonzero((link < 0) | (link >= n))
        if bad.size:
            return f"{name} of row {bad[0]} is {link[bad[0]]}, outside rows 0..{n - 1}"
    rows = np.arange(n)
    bad = np.flatnonzero(((prev != rows) & (nxt[prev] != rows)) | ((nxt != rows) & (prev[nxt] != rows)))
    if bad.size:
        i = bad[0]
        return (f"row {i}: prev {prev[i]} and next {nxt[i]} do not link back (next of {prev[i]} is {nxt[prev[i]]}, "
                f"prev of {nxt[i]} is {prev[nxt[i]]})")
    return None
