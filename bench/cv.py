"""Wall time of a full ``smallct.cv`` run: resnet18 at 128 px on a CPU, resnet152 at 224 px on a GPU.

    python bench/cv.py                       # 5 folds x 20 epochs, the device's default model
    python bench/cv.py --epochs 4            # a shorter run (the table says so)
    python bench/cv.py --compile             # CUDA: torch.compile the training forward pass

Runs ``smallct.engine.cv.run_cv`` (random init, ``--weights none``: nothing to download) on the Head CT
set into a fresh run folder, timing the whole call: loading the decoded cache (built first, outside
the timing, so the figure is the training itself), the duration estimate, every fold's training
and evaluation, and the results. Also shows the run's own estimate, the sum of per-fold times and
the pooled out-of-fold AUC (a check that the run learned, not a result).

Writes ``bench/results/cv-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import torch  # noqa: E402

from smallct.config import CVConfig, DataConfig, TrainConfig  # noqa: E402
from smallct.data import load_images  # noqa: E402
from smallct.datasets import load_dataset  # noqa: E402
from smallct.engine import run_cv  # noqa: E402

DEFAULTS = {"cpu": ("resnet18", 128), "cuda": ("resnet152", 224)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/cv.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=_report.default_data(), help="labelled PNG folder (default Head CT)")
    p.add_argument("--arch", help="default resnet18 on CPU, resnet152 on CUDA")
    p.add_argument("--img-size", type=int, help="default 128 on CPU, 224 on CUDA")
    p.add_argument("--epochs", type=int, default=20, help="default 20")
    p.add_argument("--folds", type=int, default=5, help="default 5")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: torch's own, one per core); 1 is steadier on a busy shared machine")
    p.add_argument("--compile", action="store_true", help="torch.compile on CUDA")
    p.add_argument("--run-dir", type=Path, help="run folder (default: a temporary one, deleted afterwards)")
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder of the JSON result")
    args = p.parse_args(argv)
    device = _report.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = _report.machine(device)
    arch, size = DEFAULTS[device.type]
    arch, size = args.arch or arch, args.img_size or size
    dataset = load_dataset(args.data)
    load_images(dataset.files, size, progress=False)  # the cache, built once per image size, not timed

    with tempfile.TemporaryDirectory() as tmp:
        out = args.run_dir or Path(tmp) / "run"
        cfg = CVConfig(arch=arch, weights="none", folds=args.folds, seed=0, device=device.type, out=out,
                       data=DataConfig(data=args.data, img_size=size),
                       train=TrainConfig(epochs=args.epochs, compile=args.compile))
        estimate = []

        def log(line: str) -> None:
            print(line, flush=True)
            if line.startswith("estimated duration"):
                estimate.append(line)

        start = time.perf_counter()
        result = run_cv(cfg, dataset=dataset, progress=False, log=log)
        wall = time.perf_counter() - start
    res = result.results
    per_fold = [r for r in result.history.groupby("fold")["seconds"].sum()]
    row = {"arch": arch, "img_size": size, "folds": args.folds, "epochs": args.epochs, "device": device.type,
           "torch_threads": torch.get_num_threads(),
           "compile": args.compile, "wall_s": wall, "seconds_all_folds": res["seconds_all_folds"],
           "epoch_s_median": float(result.history["seconds"].median()),
           "auc_pooled": res.get("pooled_oof", {}).get("roc_auc")}
    print()
    print(_report.table([row], [("arch", "arch", ""), ("img_size", "px", "{}"), ("folds", "folds", "{}"),
                                ("epochs", "epochs", "{}"), ("device", "device", ""), ("wall_s", "wall s", "{:.1f}"),
                                ("seconds_all_folds", "folds s", "{:.1f}"), ("epoch_s_median", "epoch s", "{:.3f}"),
                                ("auc_pooled", "oof AUC", "{:.3f}")]))
    if estimate:
        print(estimate[0])
    path = _report.write("cv", device, {**row, "epoch_seconds_by_fold": per_fold,
                                         "estimate_line": estimate[0] if estimate else None,
                                         "full_run": args.epochs == 20 and args.folds == 5}, args.out, info)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
