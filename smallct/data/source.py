"""Batches of decoded images, read by index: one owner for 200 images and for 750,000 slices.

Every step that feeds a model (training, test-fold evaluation, prediction, embeddings, Grad-CAM, nested CV,
the learning curve, few-shot fine-tuning, tuning trials) reads its images from a :class:`BatchSource`: rows of
an (N, 3, S, S) uint8 set, returned **in the order asked** (a 2.5D gather of slices i-1, i, i+1 needs that).

* :class:`MemorySource`: the set as one tensor in memory (today's speed; small sets).
* :class:`DiskSource`: the decoded-image cache file (:mod:`smallct.data.cache`), memory-mapped. Each batch is read
  with its indices sorted (neighbouring rows are neighbouring bytes), the next batches are read by a background
  thread while the model steps (into pinned memory on CUDA), and the file is opened lazily in each process from
  its path: pickling a source ships its path, never its data. The pages read belong to the kernel's page cache,
  which every process on the machine shares; they are not this process's private memory.
* :meth:`BatchSource.take`: the rows ``index`` of a source, as a source (a fold's training images; no copy).

:func:`choose_store` says which of the two a set gets (``--cache memory|disk|auto``); the choice changes no
figure: both return the same bytes, so training on either gives bit-identical results on a CPU.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

STORES = ("memory", "disk", "auto")
AUTO_MEMORY_BYTES = 512 * 2**20  # auto keeps a set in memory up to this size (all processes of the machine together)
AUTO_MEMORY_SHARE = 0.25  # ... and up to this share of the memory available
PREFETCH = 2  # batches a disk source reads ahead of the one being used


class BatchSource:
    """Rows of an (N, 3, S, S) uint8 image set, read by index in the order asked."""

    shape: tuple[int, ...]
    slice_channels = 0  # channels per slice of a 2.5D input (smallct.data.context); 0: a plain image

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def read(self, index) -> torch.Tensor:
        """The rows ``index`` (a sequence of ints), as a (len(index), 3, S, S) uint8 tensor on the CPU, in that order."""
        raise NotImplementedError

    def batches(self, index_lists: Iterable[Sequence[int]], device: torch.device | None = None
                ) -> Iterator[torch.Tensor]:
        """The rows of each index list in turn, each batch on ``device`` (default: the CPU)."""
        for index in index_lists:
            xb = self.read(index)
            yield xb if device is None or device.type == "cpu" else xb.to(device, non_blocking=True)

    def take(self, index) -> "BatchSource":
        """The rows ``index`` of this source, as a source (row i of the result is row ``index[i]`` here)."""
        return Subset(self, index)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` rows (a timed step, a preview)."""
        return self.read(np.arange(min(n, len(self))))

    def in_batches(self, batch_size: int, device: torch.device | None = None) -> Iterator[torch.Tensor]:
        """Every row in order, ``batch_size`` at a time (evaluation, prediction, embeddings)."""
        n = len(self)
        return self.batches((np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)), device)


def as_index(index, n: int | None = None) -> np.ndarray:
    """Row numbers (int64) of ``index``: integers, or a boolean mask of ``n`` rows."""
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    index = np.asarray(index).reshape(-1)
    if index.dtype == bool:
        if n is not None and len(index) != n:
            raise IndexError(f"a mask of {len(index)} rows for a set of {n} images")
        return np.flatnonzero(index)
    if len(index) and not np.issubdtype(index.dtype, np.integer):
        raise IndexError(f"rows must be integers or a boolean mask, not {index.dtype}")
    return index.astype(np.int64, copy=False)


class MemorySource(BatchSource):
    """A set held as one uint8 tensor (N, 3, S, S) in memory; on CUDA a copy on the device is kept for batches."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images: expected uint8 (N, 3, S, S) as smallct.data.open_images gives, got "
                             f"{images.dtype} {tuple(images.shape)}")
        self.tensor = images
        self.shape = tuple(images.shape)
        self._device: tuple[torch.device, torch.Tensor] | None = None

    def read(self, index) -> torch.Tensor:
        return self.tensor[torch.from_numpy(as_index(index, len(self)))]

    def on(self, device: torch.device | None) -> torch.Tensor:
        """The whole set on ``device`` (moved there once)."""
        if device is None or device == self.tensor.device or device.type == "cpu":
            return self.tensor
        if self._device is None or self._device[0] != device:
            self._device = (device, self.tensor.to(device))
        return self._device[1]

    def batches(self, index_lists, device=None):
        x = self.on(device)
        for index in index_lists:
            if not (isinstance(index, torch.Tensor) and index.device == x.device):
                index = torch.from_numpy(as_index(index, len(self)))
                if x.device.type == "cuda":  # copied without waiting for the queued steps
                    index = index.pin_memory().to(x.device, non_blocking=True)
            yield x[index]

    def __getstate__(self):
        return {"tensor": self.tensor, "shape": self.shape, "_device": None}


class Subset(BatchSource):
    """The rows ``index`` of another source (a fold's training or test images)."""

    def __init__(self, parent: BatchSource, index):
        index = as_index(index, len(parent))
        if len(index) and (index.min() < 0 or index.max() >= len(parent)):
            raise IndexError(f"rows {index.min()}..{index.max()} of a set of {len(parent)} images")
        if isinstance(parent, Subset):  # one level: a subset of a subset reads its grandparent's rows
            parent, index = parent.parent, parent.index[index]
        self.parent, self.index = parent, index
        self.shape = (len(index), *parent.shape[1:])
        self.slice_channels = parent.slice_channels

    def read(self, index) -> torch.Tensor:
        return self.parent.read(self.index[as_index(index, len(self))])

    def batches(self, index_lists, device=None):
        return self.parent.batches((self.index[as_index(i, len(self))] for i in index_lists), device)


class DiskSource(BatchSource):
    """The decoded-image cache file (a ``.npy`` of (N, 3, S, S) uint8), memory-mapped, opened lazily per process.

    ``prefetch`` batches are read ahead by a background thread; on CUDA into pinned memory.
    """

    def __init__(self, path: str | Path, prefetch: int = PREFETCH):
        self.path = Path(path)
        self.prefetch = prefetch
        self._array: np.ndarray | None = None
        self._pid: int | None = None
        self.shape: tuple[int, ...] = ()
        self.shape = tuple(self.array.shape)

    @property
    def array(self) -> np.ndarray:
        """The memory-mapped array, opened in this process on first use (after a fork: opened again)."""
        if self._array is None or self._pid != os.getpid():
            array = np.load(self.path, mmap_mode="r")
            if array.dtype != np.uint8 or array.ndim != 4:
                raise ValueError(f"{self.path}: expected uint8 (N, 3, S, S) images, found {array.dtype} "
                                 f"{array.shape}; delete it and it is decoded again")
            if self.shape and tuple(array.shape) != self.shape:  # opened again in a worker: the same file?
                raise ValueError(f"{self.path}: holds {tuple(array.shape)} images, {self.shape} when this run "
                                 "opened it (changed meanwhile): run again")
            self._array, self._pid = array, os.getpid()
        return self._array

    def __getstate__(self):  # the path travels, never the mapped data
        return {"path": self.path, "prefetch": self.prefetch, "shape": self.shape, "_array": None, "_pid": None}

    def read(self, index) -> torch.Tensor:
        index = as_index(index, len(self))
        order = np.argsort(index, kind="stable")
        rows = self.array[index[order]]  # sorted: the file read front to back
        out = np.empty_like(rows)
        out[order] = rows
        return torch.from_numpy(out)

    def batches(self, index_lists, device=None):
        cuda = device is not None and device.type == "cuda"

        def load(index):
            xb = self.read(index)
            return xb.pin_memory() if cuda else xb

        pool = ThreadPoolExecutor(1, thread_name_prefix="smallct-prefetch")
        pending: deque = deque()
        lists = iter(index_lists)
        try:
            for index in lists:
                pending.append(pool.submit(load, index))
                if len(pending) > self.prefetch:
                    break
            while pending:
                xb = pending.popleft().result()
                for index in lists:  # one batch out, the next one in
                    pending.append(pool.submit(load, index))
                    break
                yield xb.to(device, non_blocking=True) if cuda else xb
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def as_source(images) -> BatchSource:
    """A :class:`BatchSource` of ``images``: a source as it is, a uint8 tensor (N, 3, S, S) held in memory."""
    if isinstance(images, BatchSource):
        return images
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    return MemorySource(images)


def available_memory() -> int:
    """Bytes of memory this machine can give without swapping (``MemAvailable``; else half the physical memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def sharing_processes() -> int:
    """The processes of this job on this machine that each hold their own copy of a set in memory (torchrun's
    ``LOCAL_WORLD_SIZE``; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_store(store: str, nbytes: int, processes: int | None = None) -> str:
    """``memory`` or ``disk`` for a set of ``nbytes`` decoded bytes, as ``--cache`` asks (``auto``: memory while the
    copies of all ``processes`` on the machine stay within :data:`AUTO_MEMORY_BYTES` and
    :data:`AUTO_MEMORY_SHARE` of the available memory; beyond, the page cache holds one shared copy)."""
    if store not in STORES:
        raise ValueError(f"--cache {store}: expected memory, disk or auto")
    if store != "auto":
        return store
    total = nbytes * (processes or sharing_processes())
    return "memory" if total <= min(AUTO_MEMORY_BYTES, AUTO_MEMORY_SHARE * available_memory()) else "disk"
