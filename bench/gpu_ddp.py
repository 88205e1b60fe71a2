"""The prepared GPU check of issue #31 (about 2 minutes on one GPU): one process through torchrun and NCCL against
the same run without torchrun, within the tolerance of the CPU test.

    python bench/gpu_ddp.py                  # on a machine with one CUDA device
    python bench/gpu_ddp.py --device cpu     # the same check with gloo (what tests/engine/test_cv_torchrun.py does)

Both arms train the same 2-fold run (a generated phantom set of 200 images at 64 px, resnet18 from random weights:
no download) with the backbone frozen, no augmentation and float32 (``--no-amp``), as the CPU test of 2 ranks
against 1 process does; ``torchrun --nproc-per-node 1`` joins an NCCL process group and trains through
DistributedDataParallel, so the two arms differ only by NCCL's all-reduce of one rank and cuDNN's choice of kernels.
The out-of-fold probabilities must agree within :data:`TOLERANCE`. Writes ``bench/results/gpu_ddp-<device>.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # the tolerance of tests/engine/test_cv_torchrun.py (2 ranks x 8 against 1 process x 16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smallct-gpu-ddp"))
    parser.add_argument("--results", type=Path, default=None, help="the folder of the JSON file")
    args = parser.parse_args(argv)
    flags = ["--arch", "resnet18", "--weights", "none", "--img-size", "64", "--phantom-n", "200", "--folds", "2",
             "--epochs", "3", "--freeze-epochs", "3", "--augment", "none", "--no-amp", "--batch-size", "32",
             "--device", args.device, "--threads", "1", "--no-progress", "--no-tensorboard", "--group-similar", "0"]
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    arms = {"plain": [sys.executable, "-m", "smallct.cv"],
            "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                         "-m", "smallct.cv"]}
    rows = []
    for name, launch in arms.items():
        start = time.perf_counter()
        done = subprocess.run([*launch, *flags, "--out", str(args.work / name)], cwd=ROOT, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        rows.append({"arm": name, "wall_s": time.perf_counter() - start})
    a, b = (pd.read_csv(args.work / name / "oof.csv").sort_values("id") for name in arms)
    difference = float(np.abs(a["prob"].to_numpy() - b["prob"].to_numpy()).max())
    print(_report.table(rows, [("arm", "arm", ""), ("wall_s", "wall s", "{:.1f}")]))
    print(f"largest difference of the out-of-fold probabilities: {difference:.2e} (tolerance {TOLERANCE:g}): "
          f"{'within' if difference < TOLERANCE else 'OUTSIDE'}")
    path = _report.write("gpu_ddp", _report.pick_device(args.device), {
        "arms": rows, "largest_difference": difference, "tolerance": TOLERANCE,
        "within": difference < TOLERANCE}, args.results)
    print(f"wrote {path}")
    return 0 if difference < TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
