"""End-to-end tests of smallct.cv under torchrun on this CPU (gloo, loopback only): real ``python -m
torch.distributed.run`` launches of tiny phantom runs. Two processes training each fold together (DDP) against one
process at the same global batch; ``--fold-parallel`` against the sequential run, bit for bit, and its resume; two
"nodes" on 127.0.0.1 with a static rendezvous; a killed rank, its message, exit code and resume; ranks with other
settings. The unit tests of the pieces are in tests/engine/test_ranks.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from smallct.config.run import DataConfig
from smallct.datasets.folder import load_data
from smallct.models.factory import create_model
from smallct.models.weights import resolve_weights
from tests.conftest import REPO

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TINY = ["--arch", "resnet18", "--weights", "none", "--img-size", "32", "--folds", "2", "--no-progress",
        "--no-tensorboard"]
LIMIT = 180  # seconds for one launch: a hung rank fails the test (its output shown) rather than hanging CI


def _env() -> dict:
    """The test's environment (its private SMALLCT_CACHE, offline) for torchrun and its workers; gloo on loopback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = LIMIT) -> tuple[int, str]:
    """(exit code, output) of ``proc``; past ``timeout`` its process group is killed and the test fails."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(proc.args)} ran past {timeout:.0f} s:\n{out}")
    return proc.returncode, out


def _run(argv: list[str]) -> str:
    """Run ``argv`` to a successful end; its output."""
    code, out = _finish(_start(argv))
    assert code == 0, out
    return out


def _one(flags: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "smallct.cv", *TINY, *flags, "--out", str(out)]


def _standalone(n: int, flags: list[str], out: Path) -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node", str(n), "-m", "smallct.cv", *TINY, *flags, "--out", str(out)]


def _node(k: int, port: int, flags: list[str], out: Path) -> list[str]:
    """Node ``k`` of 2 with one process, rendezvous (static) at node 0's 127.0.0.1:``port``."""
    return [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(k), "--master-addr", "127.0.0.1",
            "--master-port", str(port), "-m", "smallct.cv", *TINY, *flags, "--out", str(out)]


def _two_nodes(flags: list[str], out: Path, flags_1: list[str] | None = None) -> list[tuple[int, str]]:
    """Launch both nodes together; each one's (exit code, output)."""
    port = _free_port()
    procs = [_start(_node(0, port, flags, out)), _start(_node(1, port, flags if flags_1 is None else flags_1, out))]
    return [_finish(p) for p in procs]


def _ids(n: int) -> list[str]:
    """The ids of the phantom set of ``n`` images; written here first, as a data folder exists before a launch."""
    return list(load_data(DataConfig(phantom_n=n), 0, log=lambda *a: None).ids)


def _oof(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "oof.csv", dtype={"id": str}).sort_values("id").reset_index(drop=True)


def _fold(out: Path, name: str) -> dict:
    return json.loads((out / "folds" / f"{name}.json").read_text())


def _figures(fold: dict) -> tuple:
    """What training gave in a fold file: its probabilities and history, less the seconds."""
    return fold["probs"], [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in fold["history"]]


def _assert_every_image_once(out: Path, ids: list[str]) -> None:
    # a padded evaluation shard (DistributedSampler, pytorch #25162) or a rank's part lost in the gather fails here
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert not oof["id"].duplicated().any() and sorted(oof["id"]) == sorted(ids)


def test_two_processes_of_batch_8_give_the_figures_of_one_process_of_batch_16(tmp_path):
    # Tolerance, stated before the runs: with the backbone frozen for every epoch (its BatchNorm in eval mode) and
    # no augmentation, 2 ranks x 8 images compute the loss and gradient of 1 process x 16 images; only the order of
    # the float32 sums differs (gloo's all-reduce, pytorch #36871): a relative 1e-7 per step, a few steps, so the
    # out-of-fold probabilities agree far within 1e-5. Measured: 6e-8 (probabilities), 5e-8 (train loss). A mutant
    # where both ranks read rank 0's shard (half the global batch, each row twice) moved them by 4.6e-2.
    tolerance = 1e-5
    ids = _ids(40)
    flags = ["--phantom-n", "40", "--freeze-epochs", "2", "--epochs", "2", "--augment", "none"]
    _run(_one([*flags, "--batch-size", "16", "--threads", "1"], tmp_path / "one"))
    out = _run(_standalone(2, [*flags, "--batch-size", "8"], tmp_path / "two"))
    assert "2 processes train each fold together (DDP): 8 images a step on each, 16 in all" in out
    _assert_every_image_once(tmp_path / "two", ids)
    one, two = _oof(tmp_path / "one"), _oof(tmp_path / "two")
    assert one[["id", "fold", "label"]].equals(two[["id", "fold", "label"]])
    assert np.abs(one["prob"] - two["prob"]).max() < tolerance
    for name in ("r0_f0", "r0_f1"):  # the per-epoch figures come from every rank's predictions, not rank 0's
        for a, b in zip(_figures(_fold(tmp_path / "one", name))[1], _figures(_fold(tmp_path / "two", name))[1]):
            assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=tolerance) for k in a)
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert (record["world_size"], record["global_batch"], record["processes"], record["threads"]) == (2, 16, 2, 1)
    assert record["fold_parallel"] is False


def test_fold_parallel_equals_the_sequential_run_bit_for_bit_and_resumes(tmp_path):
    # with augmentation and a trained backbone: a mutant whose fold-parallel processes train together (DDP), or draw
    # augmentation from a generator of their rank's, gives other bits
    flags = ["--phantom-n", "40", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    _ids(40)
    seq, par = tmp_path / "seq", tmp_path / "par"
    _run(_one(flags, seq))
    command = _standalone(2, [*flags, "--fold-parallel"], par)
    assert "2 processes, each training its own folds" in _run(command)
    for name in ("r0_f0", "r0_f1"):
        assert _figures(_fold(seq, name)) == _figures(_fold(par, name))
    assert (seq / "oof.csv").read_bytes() == (par / "oof.csv").read_bytes()
    record = json.loads((par / "run.json").read_text())
    assert (record["world_size"], record["processes"], record["fold_parallel"]) == (1, 2, True)
    # resume: one fold lost; the same command trains it again and only it (a mutant that ignores the finished
    # folds under --fold-parallel rewrites r0_f0)
    kept = par / "folds" / "r0_f0.json"
    before, mtime = kept.read_bytes(), kept.stat().st_mtime_ns
    oof, lost = (par / "oof.csv").read_bytes(), _figures(_fold(par, "r0_f1"))
    (par / "folds" / "r0_f1.json").unlink()
    (par / "checkpoints" / "r0_f1.pt").unlink()
    assert "resuming: 1 folds already done" in _run(command)
    assert kept.read_bytes() == before and kept.stat().st_mtime_ns == mtime
    assert _figures(_fold(par, "r0_f1")) == lost and (par / "oof.csv").read_bytes() == oof


def test_two_nodes_on_loopback_with_a_frozen_first_epoch(tmp_path):
    # --freeze-epochs 1 under DDP: the second epoch trains the backbone (a mutant whose optimiser or DDP keeps the
    # first phase's parameters leaves the first convolution as initialised)
    ids = _ids(40)
    out = tmp_path / "run"
    done = _two_nodes(["--phantom-n", "40", "--freeze-epochs", "1", "--epochs", "2", "--batch-size", "8",
                       "--threads", "1"], out)
    assert [code for code, _ in done] == [0, 0], done
    assert "run folder:" in done[0][1] and "run folder:" not in done[1][1]  # rank 0 speaks for the job
    assert (out / "results.json").is_file()
    _assert_every_image_once(out, ids)
    record = json.loads((out / "run.json").read_text())
    assert (record["world_size"], record["global_batch"], record["processes"]) == (2, 16, 2)
    torch.manual_seed(0)  # fold r0_f0's seed at --seed 0
    start = create_model("resnet18", 2, resolve_weights("resnet18", "none")).state_dict()
    trained = torch.load(out / "checkpoints" / "r0_f0.pt", map_location="cpu", weights_only=False)["model"]
    assert (trained["conv1.weight"] - start["conv1.weight"]).abs().max() > 1e-4


def _worker_of(torchrun: subprocess.Popen, timeout: float = 60) -> int:
    """The pid of the smallct.cv worker that the process ``torchrun`` started."""
    children = Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children.read_text().split() if children.exists() else []:
            with contextlib.suppress(OSError):
                if b"smallct.cv" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
        time.sleep(0.1)
    pytest.fail(f"torchrun {torchrun.pid} started no worker in {timeout} s")


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = LIMIT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"{path} never appeared: {[_finish(p, 30) for p in procs]}")
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's worker in /proc (Linux)")
def test_a_killed_rank_stops_the_other_in_one_line_and_the_same_command_resumes(tmp_path):
    # a mutant without the fault handling (Ranks.during) gives gloo's traceback, not the line; one that waits for the
    # dead rank (no timeout, a hung collective) runs past the bound; one that drops finished folds on a restart
    # rewrites r0_f0
    ids = _ids(60)
    out = tmp_path / "run"
    flags = ["--phantom-n", "60", "--epochs", "12", "--batch-size", "8", "--threads", "1"]  # r0_f1 outlives the kill
    port = _free_port()
    procs = [_start(_node(0, port, flags, out)), _start(_node(1, port, flags, out))]
    first = out / "folds" / "r0_f0.json"
    _wait_for(first, procs)
    os.kill(_worker_of(procs[1]), signal.SIGKILL)  # node 1's rank, in fold r0_f1
    killed = time.monotonic()
    code, said = _finish(procs[0], timeout=60)  # the bound
    assert code != 0 and time.monotonic() - killed < 60, said
    assert _finish(procs[1], timeout=60)[0] != 0
    line = [s for s in said.splitlines() if "rank 0 of 2" in s]
    assert len(line) == 1, said
    assert "fold r0_f1" in line[0] and "run the same command again to resume" in line[0], said
    assert "exitcode  : 2" in said  # the worker's own exit code (a one-line error), in torchrun's summary
    assert said.count("Traceback") <= 1  # torchrun's own, never the worker's (gloo's)
    assert not (out / "results.json").exists() and not (out / "folds" / "r0_f1.json").exists()
    kept, mtime = first.read_bytes(), first.stat().st_mtime_ns
    done = _two_nodes(flags, out)
    assert [c for c, _ in done] == [0, 0], done
    assert "resuming: 1 folds already done" in done[0][1]
    assert first.read_bytes() == kept and first.stat().st_mtime_ns == mtime
    assert (out / "results.json").is_file()
    _assert_every_image_once(out, ids)


def test_ranks_with_other_settings_stop_in_one_line_before_any_fold(tmp_path):
    # a mutant without Ranks.check_same trains on two different sets (or hangs in mismatched collectives)
    _ids(40), _ids(44)
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--batch-size", "8", "--threads", "1"]
    done = _two_nodes(["--phantom-n", "40", *flags], out, ["--phantom-n", "44", *flags])
    for code, said in done:
        lines = [s for s in said.splitlines() if "runs with other settings" in s]
        assert code != 0 and len(lines) == 1, said
        assert "rank 1 of 2 runs with other settings than rank 0" in lines[0] and "exitcode  : 2" in said
        # the flag's values, not the fold assignment of every image (megabytes on a large set)
        assert "phantom_n: 44 there, 40 on rank 0" in lines[0] and len(lines[0]) < 400
        assert said.count("Traceback") <= 1  # torchrun's own, never a worker's
    assert not (out / "folds").exists()


def test_one_process_under_torchrun_goes_through_ddp_and_gives_the_plain_runs_bits(tmp_path):
    # torchrun --nproc-per-node 1 joins a process group and trains through DistributedDataParallel (the path a GPU
    # check takes with NCCL on one card); with one rank the all-reduce is the identity and the batches, shards and
    # augmentation draws are a single process's, so on a CPU the run equals the plain one bit for bit. Mutants
    # caught: a rank's own augmentation generator with one rank (other draws), a shard or part of the wrong rows.
    ids = _ids(40)
    flags = ["--phantom-n", "40", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    _run(_one(flags, tmp_path / "plain"))
    said = _run(_standalone(1, flags, tmp_path / "torchrun"))
    assert "DDP" not in said  # one process: nothing said of processes
    _assert_every_image_once(tmp_path / "torchrun", ids)
    assert (tmp_path / "plain" / "oof.csv").read_bytes() == (tmp_path / "torchrun" / "oof.csv").read_bytes()
    for name in ("r0_f0", "r0_f1"):
        assert _figures(_fold(tmp_path / "plain", name)) == _figures(_fold(tmp_path / "torchrun", name))
