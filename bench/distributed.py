"""Several processes (#31): one epoch on 1 and 2 processes (DDP), and 5-fold CV sequential against --fold-parallel.

    python bench/distributed.py                      # the table of docs/distributed.md (about 15 min on 2 cores)
    python bench/distributed.py --phantom-n 40 --img-size 32 --epochs 2 --folds 2 --results /tmp  # smoke

Every arm is a real command line (``python -m smallct.cv`` or ``python -m torch.distributed.run ... -m smallct.cv``)
on the same generated phantom set, model and folds (resnet18 from random weights, no download):

* **epoch**: one process at the machine's thread count (the baseline), one process at 1 thread, and 2 processes
  under torchrun (DDP; torchrun gives each 1 thread) with the same global batch (``--batch-size`` halved per rank).
  The epoch time is the median of the epochs after the first (``history`` of the fold files; the first epoch warms
  up), over the folds.
* **cv**: a whole k-fold run, sequential at the machine's thread count (the baseline) and at 1 thread, and
  ``--fold-parallel`` with 2 processes at 1 thread each; wall time of the command, and whether the fold-parallel
  run's out-of-fold table equals the sequential 1-thread run's bit for bit.

Speed is a ratio against the baseline of the same run (these machines are noisy). On a 2-core CPU two processes
gain little or nothing over one process with two threads: the table says so. Writes
``bench/results/distributed-cpu.json`` (``--results DIR``: in DIR).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
SMALLCT_CV = ["-m", "smallct.cv"]


def cv_flags(args, out: Path, batch: int, epochs: int, folds: int) -> list[str]:
    return ["--arch", "resnet18", "--weights", "none", "--img-size", str(args.img_size), "--phantom-n",
            str(args.phantom_n), "--folds", str(folds), "--epochs", str(epochs), "--batch-size", str(batch),
            "--augment", "flip", "--no-test-curves", "--no-tensorboard", "--no-progress", "--group-similar", "0",
            "--workers", "1", "--seed", "0", "--out", str(out)]


def run(command: list[str], log: Path) -> dict:
    """Wall and CPU seconds (children) of ``command``; its output in ``log``; stops the bench if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(command[1:] if command[0] == sys.executable else command), "wall_s": wall,
            "cpu_s": cpu}


def epoch_seconds(out: Path) -> float:
    """The median seconds of an epoch after the first, over the run's folds."""
    seconds = []
    for fold in sorted((out / "folds").glob("r*_f*.json")):
        history = json.loads(fold.read_text())["history"]
        seconds += [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    return statistics.median(seconds)


def epoch_arms(args, work: Path) -> list[dict]:
    rows = []
    arms = [("1 process, all threads", [sys.executable, *SMALLCT_CV], args.batch, []),
            ("1 process, 1 thread", [sys.executable, *SMALLCT_CV], args.batch, ["--threads", "1"]),
            ("2 processes (DDP), 1 thread each", [*TORCHRUN, "--nproc-per-node", "2", *SMALLCT_CV], args.batch // 2,
             [])]
    for name, launch, batch, extra in arms:
        out = work / f"epoch-{len(rows)}"
        row = {"arm": name, **run([*launch, *cv_flags(args, out, batch, args.epochs, 2), *extra],
                                  work / f"epoch-{len(rows)}.log")}
        row["epoch_s"] = epoch_seconds(out)
        rows.append(row)
    for row in rows:
        row["speed_vs_baseline"] = rows[0]["epoch_s"] / row["epoch_s"]
    return rows


def cv_arms(args, work: Path) -> tuple[list[dict], bool]:
    rows = []
    arms = [("sequential, all threads", [sys.executable, *SMALLCT_CV], []),
            ("sequential, 1 thread", [sys.executable, *SMALLCT_CV], ["--threads", "1"]),
            ("--fold-parallel, 2 processes, 1 thread each", [*TORCHRUN, "--nproc-per-node", "2", *SMALLCT_CV],
             ["--fold-parallel", "--threads", "1"])]
    for name, launch, extra in arms:
        out = work / f"cv-{len(rows)}"
        rows.append({"arm": name, **run([*launch, *cv_flags(args, out, args.batch, args.epochs, args.folds), *extra],
                                        work / f"cv-{len(rows)}.log")})
    for row in rows:
        row["speed_vs_baseline"] = rows[0]["wall_s"] / row["wall_s"]
    same = (work / "cv-1" / "oof.csv").read_bytes() == (work / "cv-2" / "oof.csv").read_bytes()  # bit for bit
    return rows, same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom-n", type=int, default=400, help="images of the generated phantom set")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="the global batch (per rank: half, under DDP)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smallct-bench-distributed"))
    parser.add_argument("--results", type=Path, default=None, help="the folder of the JSON file (default bench/results)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for old in args.work.glob("*-*"):  # every arm trains from scratch
        if old.is_dir():
            subprocess.run(["rm", "-rf", str(old)], check=True)
    epochs = epoch_arms(args, args.work)
    print(_report.table(epochs, [("arm", "one epoch", ""), ("epoch_s", "s", "{:.2f}"),
                                 ("speed_vs_baseline", "speed vs 1 process", "{:.2f}x"), ("cpu_s", "CPU s", "{:.0f}")]))
    cvs, same = cv_arms(args, args.work)
    print(_report.table(cvs, [("arm", f"{args.folds}-fold cv", ""), ("wall_s", "wall s", "{:.1f}"),
                              ("speed_vs_baseline", "speed vs sequential", "{:.2f}x"), ("cpu_s", "CPU s", "{:.0f}")]))
    print(f"fold-parallel out-of-fold table equals the sequential 1-thread run's bit for bit: {same}")
    settings = {k: getattr(args, k) for k in ("phantom_n", "img_size", "epochs", "folds", "batch")}
    payload = {"settings": settings, "epoch": epochs, "cv": cvs, "fold_parallel_bit_identical": same}
    path = _report.write("distributed", _report.pick_device("cpu"), payload, args.results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
