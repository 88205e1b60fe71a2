"""The core count and the one parallel map: order kept, in this process for a few jobs, errors named."""

from __future__ import annotations

import os

import pytest

from smallct.parallel import available_cores, parallel_map, workers_for


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_order_is_kept_with_and_without_processes():
    jobs = list(range(40))
    here = list(parallel_map(_square, jobs, workers=1, progress=False))
    pooled = list(parallel_map(_square, jobs, workers=2, progress=False))
    assert [v for v, _ in here] == [v for v, _ in pooled] == [x * x for x in jobs]
    assert {pid for _, pid in here} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid in pooled}  # worker processes did the work
    few = list(parallel_map(_square, jobs[:5], workers=2, progress=False))
    assert {pid for _, pid in few} == {os.getpid()}  # a few jobs: no pool


def test_workers():
    assert available_cores() >= 1
    assert workers_for(0, 1000) == available_cores() and workers_for(8, 3) == 3 and workers_for(2, 0) == 1
    with pytest.raises(ValueError, match="--workers -1: expected 0"):
        workers_for(-1, 10)


def test_jobs_in_flight_are_bounded_and_order_is_kept(monkeypatch):
    # 0.3.0 submitted every chunk at once (jobs and results held grow with the number of jobs); the mutant that
    # submits all chunks up front, or yields chunks in completion order, fails here
    from concurrent.futures import ThreadPoolExecutor

    import smallct.parallel as parallel
    seen = []

    class Counting(ThreadPoolExecutor):  # threads, so that the test can count what is submitted and not yet taken
        def submit(self, fn, /, *args, **kwargs):
            seen.append(len(args[-1]) if args and isinstance(args[-1], list) else 1)
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", Counting)
    jobs = list(range(400))
    results = parallel_map(_square, jobs, workers=2, progress=False, max_chunk=5)
    first = [next(results)[0] for _ in range(5)]  # the first chunk only
    assert first == [x * x for x in range(5)]
    assert len(seen) == parallel.IN_FLIGHT * 2 + 1 and sum(seen) < len(jobs)  # 8 chunks in flight, 1 more after one
    assert first + [v for v, _ in results] == [x * x for x in jobs] and sum(seen) == len(jobs)
