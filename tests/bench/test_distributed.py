"""bench/distributed.py, the several-processes bench of issue #31, kept runnable on a tiny set: every arm launches
its real command (one process, torchrun DDP, torchrun --fold-parallel), and the JSON file holds the epoch and cv
tables with the fold-parallel run found bit-identical to the sequential one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import distributed  # noqa: E402


def test_every_arm_runs_and_the_fold_parallel_run_is_the_sequential_one(tmp_path, capsys):
    # Mutants caught: an arm that does not launch what it names (no torchrun: processes 1 in its run.json), a speed
    # ratio against another arm than the baseline, a fold-parallel run whose figures differ from the sequential one
    assert distributed.main(["--phantom-n", "24", "--img-size", "32", "--epochs", "2", "--folds", "2", "--batch",
                             "8", "--work", str(tmp_path / "work"), "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "distributed-cpu.json").read_text())
    assert [r["speed_vs_baseline"] for r in result["epoch"]][0] == 1.0 == result["cv"][0]["speed_vs_baseline"]
    assert all(r["epoch_s"] > 0 and r["wall_s"] > 0 for r in result["epoch"])
    assert result["fold_parallel_bit_identical"] is True
    records = [json.loads((tmp_path / "work" / name / "run.json").read_text()) for name in ("epoch-2", "cv-2")]
    assert [(r["world_size"], r["processes"], r["global_batch"]) for r in records] == [(2, 2, 8), (1, 2, 8)]
    assert "fold-parallel out-of-fold table equals" in capsys.readouterr().out
