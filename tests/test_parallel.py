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
