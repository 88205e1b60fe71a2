"""The cores of this machine, and one parallel map over them with a progress bar.

Decoding PNGs, reading DICOM headers, windowing slices into PNGs and preparing prediction inputs are
per-file work without shared state: :func:`parallel_map` runs such a function over a list of jobs in
worker processes (or in this process for a few jobs, where starting processes costs more than it saves),
keeps the order of the jobs, and shows one tqdm bar.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import Callable, Iterator, Sequence, TypeVar

from smallct.progress import tqdm

T = TypeVar("T")
R = TypeVar("R")

MIN_PARALLEL = 16  # fewer jobs than this run in this process: a process pool costs more than it saves
IN_FLIGHT = 4  # chunks submitted per worker at most: jobs and results held do not grow with the number of jobs


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def workers_for(workers: int, jobs: int) -> int:
    """The processes to use for ``jobs`` jobs: ``workers`` (0: every core), at most one per job.

    ``ValueError`` for a negative number of workers.
    """
    if workers < 0:
        raise ValueError(f"--workers {workers}: expected 0 (every core) or a positive number")
    return max(1, min(workers or available_cores(), jobs))


def parallel_map(fn: Callable[[T], R], jobs: Sequence[T], workers: int = 0, progress: bool = True,
                 desc: str = "", unit: str = "it", leave: bool = True, chunk_divisor: int = 8,
                 max_chunk: int | None = None) -> Iterator[R]:
    """``fn`` over ``jobs`` in order, in ``workers`` processes (0: every core; 1: this process).

    ``fn`` must be a top-level function (it is pickled). Chunks of about ``len(jobs) / (workers x
    chunk_divisor)`` jobs (at most ``max_chunk``) go to a process at a time, and at most :data:`IN_FLIGHT`
    chunks per worker are submitted and not yet yielded. Results are yielded as they come, in the order of ``jobs``.
    """
    n = workers_for(workers, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress, leave=leave, smoothing=0.1)
    try:
        if n == 1 or len(jobs) < MIN_PARALLEL:
            for job in jobs:
                yield fn(job)
                bar.update()
            return
        chunk = max(1, len(jobs) // (n * chunk_divisor))
        chunk = min(chunk, max_chunk) if max_chunk else chunk
        starts = iter(range(0, len(jobs), chunk))
        with ProcessPoolExecutor(n) as pool:
            running: deque = deque()
            for start in islice(starts, IN_FLIGHT * n):
                running.append(pool.submit(_run_chunk, fn, jobs[start:start + chunk]))
            while running:
                results = running.popleft().result()
                for start in islice(starts, 1):  # one chunk out, the next one in
                    running.append(pool.submit(_run_chunk, fn, jobs[start:start + chunk]))
                for result in results:
                    yield result
                    bar.update()
    finally:
        bar.close()


def _run_chunk(fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """``fn`` over a chunk of jobs, in a worker process."""
    return [fn(job) for job in jobs]
