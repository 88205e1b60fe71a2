"""What every benchmark shares: the device, a description of the machine, a table, the JSON file.

Each script in ``bench/`` prints a table and writes ``bench/results/<name>-<device>.json`` (``cpu`` or
``cuda``), with the command line that produced it and the machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
HEAD_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "head_ct"


def default_data() -> Path:
    """The real Head CT set: ``$SMALLCT_HEAD_CT``, else ``../shared/data/head_ct`` beside the repository."""
    return Path(os.environ.get("SMALLCT_HEAD_CT") or HEAD_CT)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def machine(device: torch.device) -> dict:
    """Facts about where the numbers come from."""
    import torchvision

    import smallct

    info = {"device": device.type, "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or "?",
            "torch": torch.__version__, "torchvision": torchvision.__version__, "smallct": smallct.__version__,
            "python": platform.python_version(), "load_avg": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | None = None) -> float:
    """Wall seconds of ``fn()``, with the GPU's queue drained before and after."""
    if device is not None:
        sync(device)
    start = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its finished child processes.

    Less sensitive than wall time to other jobs on a shared machine: DataLoader workers are counted
    once they exit (at the end of each epoch without ``persistent_workers``).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def median(values) -> float:
    return float(statistics.median(values))


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header, format) such as ("rate", "img/s", "{:.1f}")."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(k) is None else (fmt.format(row[k]) if fmt else str(row[k]))
                      for k, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def draw_differences(res: dict, seed: int) -> dict[int, float]:
    """B - A accuracy of each repeat of a comparison (``compare_runs``), keyed by its fold draw: the
    ``random_state`` it shuffled with (``smallct.data.seeds.fold_draw_seed``; ``seed + repeat`` in smallct <= 0.3)."""
    from smallct.data.seeds import fold_draw_seed  # the bench's helpers import smallct only where they need it

    out = {}
    for r in sorted({f["repeat"] for f in res["per_fold"]}):
        folds = [f for f in res["per_fold"] if f["repeat"] == r]
        n = sum(f["n_test"] for f in folds)
        out[fold_draw_seed(seed, r)] = sum(f["n_test"] * (f["accuracy_b"] - f["accuracy_a"]) for f in folds) / n
    return out


def over_draws(rows: list[dict]) -> dict:
    """The paired accuracy differences (``row["draw_diffs"]``) per distinct fold draw (a draw in several rows:
    their mean), their mean, spread and a t-interval over draws. The images are the same in every draw, so the interval is about other
    fold draws and training seeds of these 200 images, not about a new sample of patients (each row's
    bootstrap interval is)."""
    from scipy import stats

    per_draw: dict[int, list[float]] = {}
    for row in rows:
        for draw, d in row["draw_diffs"].items():
            per_draw.setdefault(int(draw), []).append(d)
    diffs = {draw: float(np.mean(v)) for draw, v in sorted(per_draw.items())}
    values = np.array(list(diffs.values()))
    out = {"draws": list(diffs), "per_draw": {str(k): v for k, v in diffs.items()}, "n_draws": len(values),
           "mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
           "draws_not_lost": int((values >= 0).sum()),
           "counted_twice": [k for k, v in per_draw.items() if len(v) > 1]}
    if len(values) > 1:
        half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
        out |= {"sd": float(values.std(ddof=1)), "t_ci95": [out["mean"] - half, out["mean"] + half]}
    return out


def earlier(path: Path, new: list[dict], settings: dict, key) -> tuple[list[dict], list[str]]:
    """The rows of an earlier result file with the same ``settings`` whose ``key(row)`` was not measured again in
    ``new`` (one seed per command still adds up to a table of several), and, when any are kept, its commands."""
    if not path.is_file():
        return [], []
    old = json.loads(path.read_text())
    measured = {key(r) for r in new}
    rows = [r for r in old.get("rows", []) if r.get("settings") == settings and key(r) not in measured]
    commands = old.get("commands") or [f"{old['command']}   # {old.get('date', '')}"]
    return rows, commands if rows else []


def write(name: str, device: torch.device, payload: dict, out: Path | None = None, info: dict | None = None) -> Path:
    """Write ``<out>/<name>-<device>.json`` with the command line and ``info`` (default :func:`machine`)."""
    folder = Path(out) if out is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device.type}.json"
    record = {"benchmark": name, "command": " ".join(["python", *sys.argv]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": info or machine(device), **payload}
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return path
