"""Memory and time of large sets: whole runs at 2,000 and 20,000 images, a 19.7 GB cache, disk against memory.

    python bench/scale.py                                  # every section (about 20 min on 2 CPU cores)
    python bench/scale.py --sections cv --sizes 500,2000   # a quick look at one section
    python bench/scale.py --sections ratio --ratio-rounds 3

Private memory is ``RssAnon`` summed over the process tree (the process and every descendant, read from
``/proc/PID/status`` every ``--interval`` s by a thread): the pages of a memory-mapped file (the cache, its
thumbnails) are the kernel's page cache, shared by every process, and do not count. ``Pss_Anon`` (from
``smaps_rollup``: a page shared by a parent and its forked decoding workers counted once) is shown beside it.

Sections (``--sections``, comma-separated; default all):

* ``cv``: synthetic 128 px PNGs (grey "slices": a skull ring around smooth random texture, every 200th image a
  near-copy of the one before; written once under ``--work``), a whole ``python -m smallct.cv`` run as a
  subprocess (``mobilenetv3_small_050``, random init, 2 folds, 1 epoch, no TTA, no test curves) with a fresh
  ``SMALLCT_CACHE`` per run, so the cache build is included; ``--cache disk`` and ``--cache memory`` at each of
  ``--sizes``. Reported: the peak private memory of the tree, overall and per phase, and each phase's time (from
  the files the run writes and its log lines: the cache file appears; its thumbnails appear; the ``smallct.cv:``
  line after the folds; the estimate's line; each fold's file; the exit); the ratio of the largest size's peak
  to the smallest's (target at most 1.25 with ``--cache disk``); what ``--cache auto`` picks at each size.
* ``big``: a ``--big-n`` x 3 x ``--big-size`` x ``--big-size`` uint8 cache (100,000 at 256 px: 19.7 GB) written
  directly (no decoding), dropped from the page cache, then ``engine.train.fit`` of a small model on
  ``DiskSource(path).take(train)`` (train: a random 80% of the rows) for ``--big-steps`` steps, in a subprocess: its
  peak private memory (target under 2 GiB) and images/s. The file is deleted at the end.
* ``ratio``: seconds per training image of ``fit`` (one epoch over ``--ratio-n`` images at 128 px) from the disk
  source against the memory source, same images, model and seed, in this process, alternated for
  ``--ratio-rounds`` rounds (the order rotating): memory; disk warm (the file read into the page cache first); disk
  cold (``posix_fadvise(DONTNEED)`` on the file before the epoch). The median of the per-round ratios (target
  warm at most 1.15).
* ``faults``: ``kill -9`` of a whole ``smallct.cv`` run (its process group) once its cache build has finished a
  chunk, then the same command: it must resume the build and give the same ``oof.csv`` as an uninterrupted run;
  and a full disk (``RLIMIT_FSIZE`` in the subprocess): one line naming the folder and the space needed, then the
  same command without the limit completes with the same ``oof.csv``.

Writes ``bench/results/scale-<device>.json`` (sections not run this time are kept from the file as it was).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCH = "mobilenetv3_small_050"
SECTIONS = ("cv", "big", "ratio", "faults")
GiB = 2**30


# ---------------------------------------------------------------- private memory of a process tree

def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``/proc/PID/task/TID/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def _field(path: str, name: str) -> int:
    """A ``name: N kB`` field of a /proc file, in bytes (0 when the process is gone)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Poller(threading.Thread):
    """Samples the private memory of ``pid``'s process tree every ``interval`` s until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int, int]] = []  # (time, RssAnon sum, Pss_Anon sum, processes)
        self._halt = threading.Event()

    def sample(self) -> None:
        pids = tree(self.pid)
        rss = sum(_field(f"/proc/{p}/status", "RssAnon:") for p in pids)
        pss = sum(_field(f"/proc/{p}/smaps_rollup", "Pss_Anon:") for p in pids)
        self.samples.append((time.perf_counter(), rss, pss, len(pids)))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> "Poller":
        self._halt.set()
        self.join()
        return self

    def peak(self, t0: float = float("-inf"), t1: float = float("inf")) -> dict:
        """Peak RssAnon and Pss_Anon sums (GiB) of the samples between ``t0`` and ``t1``."""
        before = [s for s in self.samples if s[0] < t0][-1:]  # the state the phase began with
        inside = before + [s for s in self.samples if t0 <= s[0] <= t1]
        if not inside:
            return {"rss_anon_gib": None, "pss_anon_gib": None, "processes": None}
        top = max(inside, key=lambda s: s[1])
        return {"rss_anon_gib": top[1] / GiB, "pss_anon_gib": max(s[2] for s in inside) / GiB,
                "processes": max(s[3] for s in inside)}


# ---------------------------------------------------------------- synthetic PNG slices

def slice_image(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A grey "slice": an ellipse with a skull ring, smooth random texture inside, black outside, noise."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-6, 6, 2)
    ry, rx = rng.uniform(0.33, 0.45, 2) * size
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2

    def field(cells, how):
        grid = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
        return np.asarray(grid.resize((size, size), how), np.float32) - 128

    img = np.where(r < 0.85, 50 + 1.6 * field(5, Image.BICUBIC) + 0.6 * field(24, Image.BILINEAR), 0)
    img = np.where((r >= 0.85) & (r < 1), 90, img)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def make_pngs(folder: Path, n: int, seed: int = 0) -> float:
    """``n`` synthetic 128 px PNGs and ``labels.csv`` (``id, hemorrhage``) in ``folder``, written once (the labels
    file last: its presence marks a complete set). Returns the seconds spent (0 when already there)."""
    from PIL import Image

    labels = folder / "labels.csv"
    if labels.is_file():
        return 0.0
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    y = np.random.default_rng(seed).integers(0, 2, n)
    width = max(3, len(str(n - 1)))
    previous = None
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        if i % 200 == 199:  # a near-copy of the one before (a duplicate slice): a pair for the linking to find
            img = np.clip(previous.astype(np.int16) + rng.integers(-3, 4, previous.shape), 0, 255).astype(np.uint8)
            y[i] = y[i - 1]
        else:
            img = slice_image(rng)
        Image.fromarray(img).save(folder / f"{i:0{width}d}.png", compress_level=1)
        previous = img
    rows = "".join(f"{i:0{width}d}, {y[i]}\n" for i in range(n))
    labels.write_text("id, hemorrhage\n" + rows)
    return time.perf_counter() - start


def synthetic_cache(path: Path, n: int, size: int, chunk: int = 1024, seed: int = 0) -> float:
    """An (n, 3, size, size) uint8 ``.npy`` written directly (``open_memmap``'s header, then chunks of rows: 256
    random base images, each row with its index in its first bytes). Returns the seconds spent."""
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    offset = array.offset
    del array
    base = np.random.default_rng(seed).integers(0, 256, (256, 3, size, size), dtype=np.uint8)
    row = 3 * size * size
    fd = os.open(path, os.O_WRONLY)
    try:
        for c0 in range(0, n, chunk):
            rows = np.arange(c0, min(c0 + chunk, n))
            buf = base[rows % len(base)]
            buf[:, 0, 0, :8] = rows.astype("<i8").view(np.uint8).reshape(len(rows), 8)
            os.pwrite(fd, buf.data, offset + c0 * row)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def drop_from_page_cache(path: Path) -> None:
    """``posix_fadvise(DONTNEED)`` on the whole file (pages still mapped by a process stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path: Path) -> float | None:
    """Share of the file's pages in the page cache (``fincore``; None without it)."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    try:
        return int(out.stdout.split()[0]) / path.stat().st_size
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------- a whole smallct.cv run, watched

def cv_command(data: Path, out: Path, store: str, args) -> list[str]:
    return [sys.executable, "-m", "smallct.cv", "--data", str(data), "--arch", ARCH, "--weights", "none",
            "--img-size", "128", "--folds", "2", "--epochs", "1", "--cache", store, "--no-progress",
            "--workers", str(args.workers), "--threads", str(args.threads), "--no-tta", "--no-test-curves",
            "--no-tensorboard", "--out", str(out)]


def watch(cmd: list[str], cache: Path, out: Path, interval: float, kill_when=None, limit_fsize: int | None = None
          ) -> dict:
    """Run ``cmd`` (its own process group, ``SMALLCT_CACHE=cache``) sampling its tree's memory and noting when
    its phases end; ``kill_when(cache)`` true: SIGKILL to the group. Returns times (s from the start), peaks, log."""
    env = {**os.environ, "SMALLCT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}

    def limits():
        if limit_fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG rather than a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=limits if limit_fsize is not None else None)
    poller = Poller(proc.pid, interval)
    poller.start()
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: [lines.append((time.perf_counter(), line.rstrip("\n")))
                                              for line in proc.stdout], daemon=True)
    reader.start()
    marks: dict[str, float] = {}
    files = {"cache": lambda: any(p.suffix == ".npy" for p in cache.glob("images-*.npy")),
             "thumbs": lambda: any(cache.glob("images-*.npy.thumbs64")),
             "fold1": lambda: (out / "folds" / "r0_f0.json").is_file(),
             "fold2": lambda: (out / "folds" / "r0_f1.json").is_file()}
    killed = None
    while proc.poll() is None:
        now = time.perf_counter()
        for name, seen in files.items():
            if name not in marks and seen():
                marks[name] = now
        if kill_when is not None and killed is None and kill_when(cache):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = now - start
        time.sleep(0.02)
    end = time.perf_counter()
    reader.join(5)
    poller.stop()
    for name, seen in files.items():
        if name not in marks and seen():
            marks[name] = end
    for key, text in (("folds", "smallct.cv:"), ("estimate", "estimated duration")):
        hit = next((t for t, line in lines if line.startswith(text)), None)
        if hit is not None:
            marks[key] = hit
    return {"rc": proc.returncode, "start": start, "end": end, "marks": marks, "poller": poller,
            "killed_at_s": killed, "log": [line for _, line in lines]}


PHASES = [("cache", "start", "cache", "start, cache build (decode + write)"),
          ("thumbs", "cache", "thumbs", "thumbnails (memory store: + load)"),
          ("folds", "thumbs", "folds", "pairs, folds, run folder"),
          ("estimate", "folds", "estimate", "duration estimate"),
          ("fold1", "estimate", "fold1", "fold 1 (fit + predict)"),
          ("fold2", "fold1", "fold2", "fold 2 (fit + predict)"),
          ("finish", "fold2", "end", "tables, plots, exit")]


def phases(w: dict) -> dict:
    """Seconds and peak private memory of each phase of a watched run (phases whose ends were seen)."""
    t = {"start": w["start"], "end": w["end"], **w["marks"]}
    out = {}
    for name, a, b, what in PHASES:
        if a in t and b in t:
            out[name] = {"what": what, "seconds": t[b] - t[a], **w["poller"].peak(t[a], t[b])}
    return out


def section_cv(args) -> dict:
    from smallct.data.source import AUTO_MEMORY_BYTES, available_memory, choose_store

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        data = args.work / f"png-{n}"
        made = make_pngs(data, n)
        if made:
            print(f"wrote {n} PNGs in {made:.1f} s into {data}", flush=True)
        for store in args.stores.split(","):
            cache, out = args.work / f"cache-{n}-{store}", args.work / f"run-{n}-{store}"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            cmd = cv_command(data, out, store, args)
            w = watch(cmd, cache, out, args.interval)
            if w["rc"] != 0:
                print("\n".join(w["log"][-20:]))
                raise SystemExit(f"smallct.cv failed (rc {w['rc']}): {' '.join(cmd)}")
            peak = w["poller"].peak()
            row = {"n": n, "cache": store, "wall_s": w["end"] - w["start"], "peak_rss_anon_gib": peak["rss_anon_gib"],
                   "peak_pss_anon_gib": peak["pss_anon_gib"], "max_processes": peak["processes"],
                   "phases": phases(w), "command": f"SMALLCT_CACHE={cache} " + " ".join(cmd),
                   "log": [line for line in w["log"] if not line.startswith(("|", "+", "-"))][:12],
                   "timeline": [(round(s[0] - w["start"], 2), round(s[1] / GiB, 4)) for s in w["poller"].samples]}
            rows.append(row)
            ph = row["phases"]
            print(f"  N={n} --cache {store}: {row['wall_s']:.1f} s, peak {row['peak_rss_anon_gib']:.2f} GiB RssAnon "
                  f"({row['peak_pss_anon_gib']:.2f} Pss_Anon); "
                  + ", ".join(f"{k} {v['seconds']:.1f} s/{v['rss_anon_gib'] or 0:.2f} GiB" for k, v in ph.items()),
                  flush=True)
    auto = {str(n): choose_store("auto", n * 3 * 128 * 128) for n in sizes}
    result = {"rows": rows, "auto_picks": auto,
              "auto_rule": {"memory_bytes_cap": AUTO_MEMORY_BYTES, "available_memory_gib": available_memory() / GiB}}
    small, large = min(sizes), max(sizes)
    for store in args.stores.split(","):
        a = next((r for r in rows if r["n"] == small and r["cache"] == store), None)
        b = next((r for r in rows if r["n"] == large and r["cache"] == store), None)
        if a and b and a is not b:
            result[f"peak_ratio_{store}"] = b["peak_rss_anon_gib"] / a["peak_rss_anon_gib"]
            result[f"peak_ratio_{store}_pss"] = b["peak_pss_anon_gib"] / a["peak_pss_anon_gib"]
    if "peak_ratio_disk" in result:
        result["target_disk_at_most_1_25x"] = result["peak_ratio_disk"] <= 1.25
    return result


# ---------------------------------------------------------------- a 19.7 GB cache, 200 steps

class StopSteps(Exception):
    pass


def capped(source, steps: int, times: list[float]):
    """``source`` whose batches stop after ``steps`` (``StopSteps`` at the next request); each request's time
    is noted in ``times`` (request k: step k-1 finished)."""
    from smallct.data.source import BatchSource

    class Capped(BatchSource):
        shape = source.shape

        def read(self, index):
            return source.read(index)

        def batches(self, index_lists, device=None):
            for k, xb in enumerate(source.batches(index_lists, device)):
                times.append(time.perf_counter())
                if k == steps:
                    raise StopSteps
                yield xb
    return Capped()


def big_child(args) -> None:
    """In a subprocess: ``--big-steps`` steps of fit on ``DiskSource(path).take(train)``; prints one JSON line."""
    from smallct.config import TrainConfig
    from smallct.data.source import DiskSource
    from smallct.engine import fit
    from smallct.models import create_model, resolve_weights

    torch.set_num_threads(args.threads)
    source = DiskSource(args.path)
    n = len(source)
    train = np.random.default_rng(0).permutation(n)[: int(0.8 * n)]
    y = torch.as_tensor(np.random.default_rng(1).integers(0, 2, n))
    weights = resolve_weights(ARCH, "none")
    torch.manual_seed(0)
    model = create_model(ARCH, 2, weights)
    times: list[float] = []
    start = time.perf_counter()
    try:
        fit(model, capped(source.take(train), args.big_steps, times), y[train], TrainConfig(epochs=1,
            batch_size=args.batch_size), weights.mean, weights.std, progress=False)
    except StopSteps:
        pass
    warm = min(10, args.big_steps // 4)
    rate = (args.big_steps - warm) * args.batch_size / (times[args.big_steps] - times[warm])
    print(json.dumps({"steps": args.big_steps, "train_rows": len(train), "seconds": time.perf_counter() - start,
                      "images_per_s": rate, "images_per_s_all": args.big_steps * args.batch_size /
                      (times[args.big_steps] - start)}), flush=True)


def section_big(args) -> dict:
    path = args.work / "big" / "images.npy"
    need = args.big_n * 3 * args.big_size**2
    free = shutil.disk_usage(args.work.parent if not args.work.exists() else args.work).free
    if free < need + 4 * GiB:
        return {"skipped": f"{free / GiB:.1f} GiB free under {args.work}, {need / GiB + 4:.1f} needed"}
    try:
        print(f"  writing a {args.big_n} x 3 x {args.big_size} x {args.big_size} cache ({need / 1e9:.1f} GB) ...",
              flush=True)
        write_s = synthetic_cache(path, args.big_n, args.big_size)
        drop_from_page_cache(path)
        cached = resident(path)
        cmd = [sys.executable, str(Path(__file__).resolve()), "_big-child", "--path", str(path),
               "--big-steps", str(args.big_steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        poller = Poller(proc.pid, args.interval)
        poller.start()
        stdout, stderr = proc.communicate()
        poller.stop()
        if proc.returncode != 0:
            raise SystemExit(f"big: child failed (rc {proc.returncode}): {stderr[-2000:]}")
        child = json.loads(stdout.strip().splitlines()[-1])
        peak = poller.peak()
        result = {"n": args.big_n, "img_size": args.big_size, "file_gb": need / 1e9, "write_s": write_s,
                  "resident_share_at_start": cached, "batch_size": args.batch_size, "arch": ARCH,
                  "threads": args.threads, "wall_s": time.perf_counter() - start,
                  "peak_rss_anon_gib": peak["rss_anon_gib"], "peak_pss_anon_gib": peak["pss_anon_gib"],
                  "target_under_2_gib": peak["rss_anon_gib"] < 2, **child, "command": " ".join(cmd)}
        print(f"  {args.big_steps} steps: peak {peak['rss_anon_gib']:.2f} GiB RssAnon, "
              f"{child['images_per_s']:.1f} images/s", flush=True)
        return result
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


# ---------------------------------------------------------------- disk source against memory source

def section_ratio(args) -> dict:
    from smallct.config import TrainConfig
    from smallct.data.source import DiskSource, MemorySource
    from smallct.engine import fit
    from smallct.models import create_model, resolve_weights

    path = args.work / "ratio" / "images.npy"
    shutil.rmtree(path.parent, ignore_errors=True)
    synthetic_cache(path, args.ratio_n, 128)
    memory = MemorySource(torch.from_numpy(np.load(path)))
    n = args.ratio_n
    train = np.random.default_rng(0).permutation(n)
    y = torch.as_tensor(np.random.default_rng(1).integers(0, 2, n))
    weights = resolve_weights(ARCH, "none")
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size)
    results: dict = {}
    try:
        for threads in [int(t) for t in args.ratio_threads.split(",")]:
            torch.set_num_threads(threads)

            def epoch(kind: str, seed: int) -> tuple[float, float, float | None]:
                gc.collect()
                source, state = memory, None
                if kind != "memory":
                    if kind == "disk cold":
                        drop_from_page_cache(path)
                    else:
                        with open(path, "rb") as fh:  # into the page cache
                            while fh.read(64 * 2**20):
                                pass
                    state = resident(path)
                    source = DiskSource(path)
                torch.manual_seed(0)
                model = create_model(ARCH, 2, weights)
                cpu = _report.cpu_seconds()
                seconds = _report.timed(lambda: fit(model, source.take(train), y[train], cfg, weights.mean,
                                                    weights.std, seed=seed, progress=False))
                return seconds / n, (_report.cpu_seconds() - cpu) / n, state

            kinds = ["memory", "disk warm", "disk cold"]
            epoch("memory", 0)  # warm-up of the model's kernels
            per: dict[str, list] = {k: [] for k in kinds}
            for r in range(args.ratio_rounds):
                for kind in kinds[r % 3:] + kinds[: r % 3]:
                    per[kind].append(epoch(kind, r))
                print(f"  threads {threads} round {r + 1}: " + ", ".join(f"{k} {v[-1][0] * 1e3:.2f} ms/img"
                                                                       for k, v in per.items()), flush=True)
            rows = {}
            for kind in kinds:
                secs = [s for s, _, _ in per[kind]]
                ratios = [s / m for s, (m, _, _) in zip(secs, per["memory"])]
                rows[kind] = {"ms_per_image_median": _report.median(secs) * 1e3,
                              "ms_per_image": [s * 1e3 for s in secs],
                              "cpu_ms_per_image": [c * 1e3 for _, c, _ in per[kind]],
                              "resident_share_before": [r for _, _, r in per[kind]],
                              "ratio_vs_memory_median": _report.median(ratios), "ratio_vs_memory": ratios}
            results[f"threads_{threads}"] = rows
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    warm = [v["disk warm"]["ratio_vs_memory_median"] for v in results.values()]
    return {"n": n, "img_size": 128, "arch": ARCH, "batch_size": args.batch_size, "rounds": args.ratio_rounds,
            "by_threads": results, "target_warm_at_most_1_15x": all(r <= 1.15 for r in warm)}


# ---------------------------------------------------------------- faults

def _oof(folder: Path):
    import pandas as pd

    return pd.read_csv(folder / "oof.csv")


def section_faults(args) -> dict:
    n = min(int(s) for s in args.sizes.split(","))
    data = args.work / f"png-{n}"
    make_pngs(data, n)
    result: dict = {"n": n}
    reference = args.work / f"run-{n}-disk"
    if not (reference / "oof.csv").is_file():
        shutil.rmtree(args.work / f"cache-{n}-disk", ignore_errors=True)
        w = watch(cv_command(data, reference, "disk", args), args.work / f"cache-{n}-disk", reference, args.interval)
        assert w["rc"] == 0, "\n".join(w["log"][-20:])
    ref = _oof(reference)

    def chunk_marks(rec: Path) -> bytes:
        """The one-byte-per-chunk marks of a ``.chunks`` record (after its 4-byte rows-per-chunk header, if any)."""
        marks = rec.read_bytes()
        rows = int.from_bytes(marks[:4], "little") if len(marks) > 4 else 0
        return marks[4:] if rows and len(marks) - 4 == -(-n // rows) else marks

    def chunk_done(cache: Path) -> bool:
        for rec in cache.glob("images-*.npy.chunks"):
            try:
                marks = chunk_marks(rec)
            except OSError:
                continue
            if 0 < marks.count(1) < len(marks):
                return True
        return False

    # kill -9 once a chunk of the cache is on disk
    cache, out = args.work / f"cache-{n}-killed", args.work / f"run-{n}-killed"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = cv_command(data, out, "disk", args)
    first = watch(cmd, cache, out, args.interval, kill_when=chunk_done)
    left = sorted(p.name for p in cache.glob("images-*"))
    chunks = [chunk_marks(rec) for rec in cache.glob("images-*.npy.chunks")]
    again = watch(cmd, cache, out, args.interval)
    resumed = [line for line in again["log"] if "resuming the image cache" in line]
    same = again["rc"] == 0 and _oof(out).equals(ref)
    result["kill9"] = {"command": f"SMALLCT_CACHE={cache} " + " ".join(cmd), "killed_at_s": first["killed_at_s"],
                       "rc_killed": first["rc"], "left_in_cache": left,
                       "chunks_done_at_kill": [f"{c.count(1)}/{len(c)}" for c in chunks],
                       "rerun_rc": again["rc"], "rerun_said": resumed, "rerun_s": again["end"] - again["start"],
                       "oof_equal_to_uninterrupted": same}
    print(f"  kill -9 at {first['killed_at_s']}s with chunks {result['kill9']['chunks_done_at_kill']}: rerun rc "
          f"{again['rc']}, {resumed[:1]}, oof equal: {same}", flush=True)

    # a full disk: RLIMIT_FSIZE below the cache's size
    cache, out = args.work / f"cache-{n}-full", args.work / f"run-{n}-full"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = cv_command(data, out, "disk", args)
    full = watch(cmd, cache, out, args.interval, limit_fsize=8 * 2**20)
    said = [line for line in full["log"] if "cannot write the image cache" in line]
    left = sorted(p.name for p in cache.glob("images-*"))
    again = watch(cmd, cache, out, args.interval)
    same = again["rc"] == 0 and _oof(out).equals(ref)
    result["full_disk"] = {"limit_bytes": 8 * 2**20, "rc": full["rc"], "said": said, "log_tail": full["log"][-3:],
                           "left_in_cache": left, "rerun_rc": again["rc"], "oof_equal_to_uninterrupted": same}
    print(f"  full disk: rc {full['rc']}, said {said[:1]}, left {left}; rerun rc {again['rc']}, oof equal: {same}",
          flush=True)
    return result


# ---------------------------------------------------------------- the table, the file

def print_tables(payload: dict) -> None:
    cv = payload.get("cv")
    if cv:
        rows = []
        for r in cv["rows"]:
            ph = r["phases"]
            rows.append({"n": r["n"], "store": r["cache"], "peak": r["peak_rss_anon_gib"],
                         "pss": r["peak_pss_anon_gib"], "wall": r["wall_s"],
                         **{k: ph[k]["seconds"] for k in ph}, "train_peak": max(
                             (ph[k]["rss_anon_gib"] for k in ("fold1", "fold2") if k in ph), default=None)})
        print(_report.table(rows, [("n", "images", "{:,}"), ("store", "--cache", ""),
                                   ("peak", "peak RssAnon GiB", "{:.2f}"), ("pss", "Pss_Anon GiB", "{:.2f}"),
                                   ("wall", "wall s", "{:.1f}")] + [
            (k, k + " s", "{:.1f}") for k, *_ in PHASES] + [("train_peak", "train peak GiB", "{:.2f}")]))
        for store in ("disk", "memory"):
            if f"peak_ratio_{store}" in cv:
                print(f"peak at the largest / smallest size, --cache {store}: {cv[f'peak_ratio_{store}']:.2f}x "
                      f"(Pss_Anon {cv[f'peak_ratio_{store}_pss']:.2f}x)")
        print(f"--cache auto picks: {cv['auto_picks']}")
    big = payload.get("big")
    if big and "skipped" not in big:
        print(f"\n{big['n']:,} x 3 x {big['img_size']} px cache ({big['file_gb']:.1f} GB, written in "
              f"{big['write_s']:.0f} s): {big['steps']} steps of {big['arch']}, batch {big['batch_size']}: peak "
              f"{big['peak_rss_anon_gib']:.2f} GiB RssAnon, {big['images_per_s']:.1f} images/s")
    ratio = payload.get("ratio")
    if ratio:
        rows = [{"threads": t.split("_")[1], "kind": k, **v} for t, kinds in ratio["by_threads"].items()
                for k, v in kinds.items()]
        print()
        print(_report.table(rows, [("threads", "threads", ""), ("kind", "source", ""),
                                   ("ms_per_image_median", "ms/img", "{:.2f}"),
                                   ("ratio_vs_memory_median", "x memory (median)", "{:.3f}")]))
    faults = payload.get("faults")
    if faults:
        print(f"\nkill -9: {faults['kill9']['chunks_done_at_kill']} chunks done at the kill; the rerun "
              f"{'resumed' if faults['kill9']['rerun_said'] else 'did not say it resumed'}; oof equal to an "
              f"uninterrupted run: {faults['kill9']['oof_equal_to_uninterrupted']}")
        fd = faults["full_disk"]
        print(f"full disk: {fd['said'][:1] or fd['log_tail']}; rerun oof equal: {fd['oof_equal_to_uninterrupted']}")


def code_state() -> dict:
    """The commit and a digest of the package's uncommitted changes (the figures belong to this code)."""
    import hashlib

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True).stdout

    untracked = git("ls-files", "--others", "--exclude-standard", "smallct").decode().split()
    digest = hashlib.sha1(git("diff", "HEAD", "--", "smallct"))
    for name in sorted(untracked):
        digest.update((ROOT / name).read_bytes())
    return {"head": git("rev-parse", "HEAD").decode().strip(), "smallct_changes_sha1": digest.hexdigest()[:12]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("child", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    p.add_argument("--sizes", default="2000,20000", help="cv: images of each run (default 2000,20000)")
    p.add_argument("--stores", default="disk,memory", help="cv: --cache of each run (default disk,memory)")
    p.add_argument("--workers", type=int, default=2, help="cv: --workers of smallct.cv (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--big-n", type=int, default=100_000, help="big: rows of the cache (default 100000)")
    p.add_argument("--big-size", type=int, default=256, help="big: side in px (default 256)")
    p.add_argument("--big-steps", type=int, default=200, help="big: training steps (default 200)")
    p.add_argument("--ratio-n", type=int, default=5000, help="ratio: images (default 5000)")
    p.add_argument("--ratio-rounds", type=int, default=3, help="ratio: alternations (default 3)")
    p.add_argument("--ratio-threads", default="1", help="ratio: torch thread counts, comma-separated (default 1)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between memory samples (default 0.1)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "smallct-scale",
                   help="scratch folder: PNGs, caches, runs (default /tmp/smallct-scale)")
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder of the JSON result")
    args = p.parse_args(argv)
    if args.child == "_big-child":
        big_child(args)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")  # the sections measure memory and the data path; training runs on the CPU
    info = _report.machine(device)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; expected some of {', '.join(SECTIONS)}")
    print(f"scale benchmark: {', '.join(sections)}; {info['cpu']}, {info['cpu_cores']} cores, load {info['load_avg']}",
          flush=True)
    info["code"] = code_state()
    path = args.out / f"scale-{device.type}.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    payload = {name: kept[name] for name in SECTIONS if name in kept and name not in sections}
    when = {name: kept.get("section_dates", {}).get(name) for name in payload}
    for name in sections:
        print(f"\n[{name}]", flush=True)
        start = time.perf_counter()
        payload[name] = {"seconds": None, **globals()[f"section_{name}"](args)}
        payload[name]["seconds"] = time.perf_counter() - start
        payload[name]["code"] = info["code"]  # sections kept from an earlier run keep their own
        when[name] = time.strftime("%Y-%m-%d %H:%M:%S") + "   python " + " ".join(sys.argv)
        written = _report.write("scale", device, {"section_dates": when, **payload}, args.out, info)  # as it goes
    print()
    print_tables(payload)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
