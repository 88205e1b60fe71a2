"""Atomic writes: the target is replaced whole or left as it was, and no temporary file stays behind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smallct.io.files import atomic_csv, atomic_json, atomic_npy, atomic_write, cache_dir


def test_writes_replace_the_target_and_leave_no_temporary(tmp_path):
    atomic_json(tmp_path / "a" / "r.json", {"x": np.float64(0.5)})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 0.5}
    atomic_csv(tmp_path / "t.csv", pd.DataFrame({"id": ["001"], "p": [0.25]}))
    assert (tmp_path / "t.csv").read_text() == "id,p\n001,0.25\n"
    atomic_npy(tmp_path / "z.npy", np.arange(3))
    assert np.load(tmp_path / "z.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["r.json", "t.csv", "z.npy"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLCT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
