"""Images per second of ingest: PNG normalisation and DICOM windowing, on one core and on all cores.

    python bench/ingest.py                      # the Head CT PNGs, synthetic 512 px RSNA-like DICOM
    python bench/ingest.py --passes 1 --dicom-slices 60   # quicker

Rows (each on one core, in this process, and on all cores through a process pool, the way
``smallct.data.cache.decode_all`` works; the all-core figure includes starting the pool):

* ``png to_rgb_uint8``: open, decode and normalise a PNG to RGB uint8 (H, W, 3).
* ``png preprocess``: the same, then crop the black border and resize to ``--size`` px (what the cache holds).
* ``dicom to_rgb``: read a DICOM slice, HU, three windows, crop, resize to ``--size`` px, over a
  synthetic set that mixes the encodings of ``smallct.datasets.synthetic_dicom`` (native int16 / uint12,
  RLE, JPEG 2000, JPEG Lossless); per encoding on one core.
* ``dicom window``: windowing alone (``hu_to_rgb`` with brain/subdural/bone) of an HU array in memory.
* ``dicom real sample``: ``to_rgb`` of the real RSNA slice in ``shared/data/rsna_sample``, when present.

Writes ``bench/results/ingest-<device>.json`` (the device is where torch would run; ingest is CPU work).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from smallct.io import dicom, windows  # noqa: E402
from smallct.io.images import list_images, preprocess, to_rgb_uint8  # noqa: E402
from smallct.parallel import available_cores  # noqa: E402


def _png_rgb(path: Path) -> int:
    return to_rgb_uint8(path).shape[0]


def _png_preprocess(job: tuple[Path, int]) -> int:
    return preprocess(job[0], job[1]).shape[0]


def _dicom_rgb(job: tuple[Path, int]) -> int:
    return dicom.to_rgb(job[0], size=job[1]).shape[0]


def _hu_window(hu: np.ndarray) -> int:
    return windows.hu_to_rgb(hu).shape[0]


def rate(fn, jobs: list, workers: int) -> dict:
    """Images per second of ``fn`` over ``jobs``: serially when ``workers`` is 1, else in a process pool."""
    start = time.perf_counter()
    if workers == 1:
        for job in jobs:
            fn(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    seconds = time.perf_counter() - start
    return {"workers": workers, "images": len(jobs), "seconds": seconds, "images_per_s": len(jobs) / seconds}


def synthetic_dicom(folder: Path, slices: int, side: int) -> tuple[list[Path], dict[str, str]]:
    """Readable slices of a synthetic RSNA-like set (the deliberately truncated one left out) and their encodings."""
    from smallct.datasets.synthetic_dicom import write_synthetic_rsna

    info = write_synthetic_rsna(folder, n_patients=max(1, slices // 5), slices_per_series=5, seed=0, size=side)
    files = [f for f in info["files"] if f.stem != info["corrupt"]]
    return files, {f.stem: info["formats"][f.stem] for f in files}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/ingest.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=_report.default_data(), help="PNG folder (default: the Head CT set)")
    p.add_argument("--size", type=int, default=128, help="output side in px of preprocess / to_rgb (default 128)")
    p.add_argument("--passes", type=int, default=2, help="passes over the PNG folder per measurement (default 2)")
    p.add_argument("--dicom-slices", type=int, default=200, help="synthetic DICOM slices (default 200)")
    p.add_argument("--dicom-side", type=int, default=512, help="side of the synthetic slices in px (default 512)")
    p.add_argument("--workers", type=int, default=0, help="processes for the all-core rows (0: every core)")
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder of the JSON result")
    args = p.parse_args(argv)
    device = _report.pick_device()
    info = _report.machine(device)
    cores = args.workers or available_cores()
    pngs = list_images(args.data)
    if not pngs:
        print(f"bench/ingest.py: error: {args.data}: no images", file=sys.stderr)
        return 2
    rows = []

    def measure(task: str, fn, jobs: list, note: str = "") -> None:
        fn(jobs[0])  # warm-up: imports, first-call caches
        for workers in sorted({1, cores}):
            rows.append({"task": task, **rate(fn, jobs, workers), "note": note})
            print(f"  {task:<28} {workers} proc: {rows[-1]['images_per_s']:8.1f} images/s", flush=True)

    print(f"ingest benchmark: {len(pngs)} PNGs from {args.data}, {cores} cores", flush=True)
    measure("png to_rgb_uint8", _png_rgb, pngs * args.passes, "decode + normalise to RGB uint8, full size")
    measure("png preprocess", _png_preprocess, [(f, args.size) for f in pngs] * args.passes,
            f"+ crop + resize to {args.size} px (the cache's work)")

    per_encoding = {}
    with tempfile.TemporaryDirectory() as tmp:
        files, encodings = synthetic_dicom(Path(tmp), args.dicom_slices, args.dicom_side)
        jobs = [(f, args.size) for f in files]
        measure("dicom to_rgb", _dicom_rgb, jobs, f"synthetic {args.dicom_side} px, mixed encodings, "
                f"3 windows, {args.size} px")
        for enc in sorted(set(encodings.values())):
            sub = [(f, args.size) for f in files if encodings[f.stem] == enc]
            per_encoding[enc] = rate(_dicom_rgb, sub, 1)
        hu = dicom.read_hu(files[0], mask_padding=True)
    measure("dicom window", _hu_window, [hu] * max(50, args.dicom_slices),
            f"hu_to_rgb of one {hu.shape[0]}x{hu.shape[1]} HU array in memory")
    real = sorted(Path(_report.default_data()).parent.joinpath("rsna_sample").glob("*.dcm"))
    if real:
        measure("dicom real sample", _dicom_rgb, [(real[0], args.size)] * 100, f"{real[0].name}, repeated")

    print()
    print(_report.table(rows, [("task", "task", ""), ("workers", "processes", "{}"), ("images", "images", "{}"),
                               ("seconds", "seconds", "{:.2f}"), ("images_per_s", "images/s", "{:.1f}")]))
    print("\nDICOM to_rgb on one core, by encoding:")
    print(_report.table([{"encoding": k, **v} for k, v in per_encoding.items()],
                        [("encoding", "encoding", ""), ("images", "images", "{}"),
                         ("images_per_s", "images/s", "{:.1f}")]))
    path = _report.write("ingest", device, {"size": args.size, "cores": cores, "rows": rows,
                                            "dicom_by_encoding": per_encoding, "png_folder": str(args.data)},
                         args.out, info)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
