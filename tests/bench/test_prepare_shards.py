"""bench/prepare_shards.py, the sharded-preparation bench of issue #31, kept runnable on a tiny set: every arm runs
as processes, the merged folders equal the unsharded one, and the table's figures land in the JSON file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import prepare_shards  # noqa: E402


def test_bench_runs_every_arm_and_writes_its_figures(tmp_path, capsys):
    # Mutants caught: the two shards not both run (fewer images than the unsharded run), a merge that differs from
    # the unsharded manifest (exit 1), the ratio not taken against the unsharded run of the same call.
    out = tmp_path / "r.json"
    assert prepare_shards.main(["--patients", "4", "--slices", "5", "--size", "32", "--png-size", "16",
                                "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = {r["run"]: r for r in record["rows"]}
    assert list(rows) == ["unsharded", "1 shard", "2 shards"] and record["files"] == 20
    assert all(r["images"] == 20 and r["same_manifest"] for r in rows.values())
    assert rows["unsharded"]["ratio"] == 1.0 and rows["2 shards"]["processes"] == 2
    assert rows["2 shards"]["ratio"] == rows["2 shards"]["per_core"] / rows["unsharded"]["per_core"]
    assert rows["1 shard"]["header_blocks_read"] == 1 and record["header_ms_per_file"] > 0
    assert "2 shards" in capsys.readouterr().out
