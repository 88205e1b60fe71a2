"""Sharded preparation (issue #31): ``prepare rsna`` in one process against 1 and 2 shard processes, then ``merge``.

    python bench/prepare_shards.py                          # 100 series x 30 slices of 256 px (a few minutes)
    python bench/prepare_shards.py --patients 20 --slices 10 --size 64 --out /tmp/smoke.json

Writes a synthetic RSNA set (``smallct.datasets.synthetic_dicom.write_synthetic_rsna``, int16 slices) under
``--work``, then times, each as ``python -m smallct.prepare`` subprocesses into a fresh folder:

* ``unsharded``: ``prepare rsna --workers 1`` (today's path, the baseline of the ratio);
* ``1 shard``: ``prepare rsna --shard 1/1 --workers 1`` then ``prepare merge``;
* ``2 shards``: ``--shard 1/2`` and ``--shard 2/2``, ``--workers 1`` each, started at the same time as two
  processes, then ``prepare merge``.

Wall seconds are from the first start to the last exit (merge apart); images/s per core divides by the processes
(one core each). CPU seconds (user + system of the processes, from ``getrusage``) give images per CPU second, the
per-core throughput that other jobs on a shared machine disturb least. Also measured once, in this process on one core: the header pass (``read_headers``, pixels not
read) against the whole per-slice work of the unsharded run, per file. Every sharded folder's ``manifest.csv`` is
checked byte for byte against the unsharded one. Prints a table and writes JSON (``--out``, default
``bench/results/prepare_shards-cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402


def prepare(*args: str) -> list[str]:
    return [sys.executable, "-m", "smallct.prepare", *args]


def run_all(commands: list[list[str]]) -> tuple[float, float]:
    """Start ``commands`` at once; wall seconds until the last exits, and their CPU seconds (user + system, all
    processes; each must exit 0)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - start
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    for c, p, o in zip(commands, procs, outputs):
        if p.returncode:
            raise SystemExit(f"{' '.join(c)} exited {p.returncode}:\n{o}")
    return seconds, (now.ru_utime - used.ru_utime) + (now.ru_stime - used.ru_stime)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--patients", type=int, default=100, help="series (one per patient; default %(default)s)")
    p.add_argument("--slices", type=int, default=30, help="slices per series (default %(default)s)")
    p.add_argument("--size", type=int, default=256, help="side of the DICOM slices in px (default %(default)s)")
    p.add_argument("--png-size", type=int, default=256, help="side of the prepared PNGs (default %(default)s)")
    p.add_argument("--work", type=Path, default=Path("/tmp/smallct-bench-prepare-shards"),
                   help="scratch folder (the DICOM set is kept and reused; default %(default)s)")
    p.add_argument("--out", type=Path, help="JSON result file (default bench/results/prepare_shards-cpu.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from smallct.datasets.synthetic_dicom import write_synthetic_rsna
    from smallct.io.dicom import read_headers

    args = parse(argv)
    dicom = args.work / f"dicom-{args.patients}x{args.slices}-{args.size}"
    if not (dicom / "labels.csv").is_file():
        shutil.rmtree(dicom, ignore_errors=True)
        write_synthetic_rsna(dicom, n_patients=args.patients, slices_per_series=args.slices, seed=0,
                             size=args.size, formats=("int16",))
    files = sorted(dicom.glob("*.dcm"))
    common = ["--dicom", str(dicom), "--labels", str(dicom / "labels.csv"), "--size", str(args.png_size),
              "--workers", "1", "--no-progress"]
    rows, commands = [], []

    def arm(name: str, shards: int) -> dict:
        out = args.work / name.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        if shards == 0:
            cmds = [prepare("rsna", *common, "--out", str(out))]
        else:
            cmds = [prepare("rsna", *common, "--out", str(out), "--shard", f"{k}/{shards}")
                    for k in range(1, shards + 1)]
        commands.extend(" ".join(c[1:]) + (" &" if len(cmds) > 1 else "") for c in cmds)
        wall, cpu = run_all(cmds)
        row = {"run": name, "processes": max(shards, 1), "wall_s": wall, "cpu_s": cpu}
        if shards:
            merge = prepare("merge", str(out))
            commands.append(" ".join(merge[1:]))
            row["merge_s"] = run_all([merge])[0]
            reports = [json.loads((out / "shards" / f"report-{k}-of-{shards}.json").read_text())
                       for k in range(1, shards + 1)]
            row["header_pass_s"] = max(r["shard"]["header_pass"]["seconds"] for r in reports)
            row["header_blocks_read"] = sum(r["shard"]["header_pass"]["read"] for r in reports)
        report = json.loads((out / "report.json").read_text())
        row["images"] = report["written"] + report["kept"] + report["failed"]
        row["images_per_s"] = row["images"] / wall
        row["per_core"] = row["images_per_s"] / row["processes"]
        row["per_cpu_s"] = row["images"] / cpu
        row["manifest"] = (out / "manifest.csv").read_bytes()
        return row

    base = arm("unsharded", 0)
    rows = [base, arm("1 shard", 1), arm("2 shards", 2)]
    baseline = base["manifest"]
    for row in rows:
        row["ratio"] = row["per_core"] / base["per_core"]
        row["cpu_ratio"] = row["per_cpu_s"] / base["per_cpu_s"]
        row["same_manifest"] = row.pop("manifest") == baseline
    headers_s = _report.timed(lambda: read_headers(files, workers=1, progress=False))
    header_ms, full_ms = 1e3 * headers_s / len(files), 1e3 * base["wall_s"] / base["images"]
    print(f"{len(files)} synthetic slices of {args.size} px -> {args.png_size} px PNGs; header pass "
          f"{header_ms:.2f} ms/file against {full_ms:.2f} ms/file for the whole unsharded run "
          f"({100 * header_ms / full_ms:.1f}%)")
    print(_report.table(rows, [("run", "run", ""), ("processes", "processes", "{}"), ("wall_s", "wall s", "{:.1f}"),
                               ("images_per_s", "img/s", "{:.1f}"), ("per_core", "img/s per core", "{:.1f}"),
                               ("ratio", "x unsharded", "{:.2f}"), ("cpu_s", "CPU s", "{:.1f}"),
                               ("per_cpu_s", "img per CPU s", "{:.1f}"), ("cpu_ratio", "x unsharded (CPU)", "{:.2f}"),
                               ("header_pass_s", "header pass s", "{:.1f}"),
                               ("header_blocks_read", "blocks read", "{}"), ("merge_s", "merge s", "{:.1f}"),
                               ("same_manifest", "same manifest.csv", "")]))
    payload = {"settings": {"patients": args.patients, "slices": args.slices, "size": args.size,
                            "png_size": args.png_size}, "files": len(files), "header_ms_per_file": header_ms,
               "full_ms_per_file": full_ms, "rows": rows, "commands": commands}
    device = torch.device("cpu")
    if args.out is None:
        path = _report.write("prepare_shards", device, payload)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        path = args.out
        record = {"benchmark": "prepare_shards", "command": " ".join(["python", *sys.argv]),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": _report.machine(device), **payload}
        path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"wrote {path}")
    return 0 if all(r["same_manifest"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
