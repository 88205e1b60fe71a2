"""bench/gpu_sources.py, the GPU check of issue #29, kept runnable on a CPU: its loop that mirrors ``fit`` (for
channels-last off) still trains as ``fit`` does, and every row of its table runs and lands in its JSON file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_sources  # noqa: E402

from smallct.config import TrainConfig  # noqa: E402
from smallct.data.source import MemorySource  # noqa: E402
from smallct.engine.train import fit  # noqa: E402
from smallct.models import create_model, resolve_weights  # noqa: E402


def test_plain_epoch_trains_as_fit_does():
    # Mutants caught: plain_epoch without the affine augmentation, the per-image ingredients (brightness here),
    # the normalisation or the learning-rate schedule; a fit whose step gains or loses one of these.
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8))
    y = torch.as_tensor(np.random.default_rng(1).integers(0, 2, 20))
    source = MemorySource(images).take(np.random.default_rng(2).permutation(20))
    cfg = TrainConfig(epochs=1, batch_size=8, brightness=0.2)
    weights = resolve_weights("resnet18", "none")
    states = []
    for train in ("fit", "plain"):
        torch.manual_seed(0)
        model = create_model("resnet18", 2, weights)
        if train == "fit":
            fit(model, source, y, cfg, weights.mean, weights.std, seed=3, progress=False)
        else:
            gpu_sources.plain_epoch(model, source, y, cfg, weights.mean, weights.std, torch.device("cpu"), 3,
                                    channels_last=True)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    with pytest.raises(ValueError, match="mixup"):
        gpu_sources.plain_epoch(model, source, y, TrainConfig(mixup=0.2), weights.mean, weights.std,
                                torch.device("cpu"), 0, channels_last=True)


def test_every_row_runs_and_is_written(tmp_path):
    n, batch = 44, 8  # 44 = 5 x 8 + 4: the cold row's whole epoch ends with a batch of 4
    assert gpu_sources.main(["--device", "cpu", "--n", str(n), "--img-size", "32", "--batch-size", str(batch),
                             "--warmup", "1", "--steps", "2", "--threads", "1", "--budget", "600",
                             "--work", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_sources-cpu.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == [label for label, *_ in gpu_sources.ROWS] and result["skipped"] == []
    assert rows["memory"]["ratio"] == 1.0
    for r in rows.values():
        assert r["images_per_s"] > 0 and 0 <= r["host_wait_share"] <= 1 and r["gpu_wait_share"] is None
        assert r["images_per_s"] / rows["memory"]["images_per_s"] == pytest.approx(r["ratio"])
    cold = rows["disk cold (whole epoch)"]
    assert (cold["steps_timed"], cold["images_timed"]) == (6, n)
    assert all(r["steps_timed"] == 2 and r["images_timed"] == 2 * batch for k, r in rows.items() if r is not cold)
    assert rows["memory, plain loop, NCHW"]["layout"] == "NCHW"
    assert rows["memory, compiled"]["compile"] == "ignored (cpu)"  # fit compiles on CUDA only
    assert list((tmp_path / "work").iterdir()) == []  # the cache and its folder are deleted
