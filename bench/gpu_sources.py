"""Images per second at 256 px on a GPU: the memory and the disk source, the share of time the GPU waits for
data, and mixed precision, channels-last and ``torch.compile`` on and off (issue #29's GPU check).

    PYTHONPATH=. python3 bench/gpu_sources.py --out "$OUT"   # a GPU machine: about 3 minutes on an H100
    python bench/gpu_sources.py --smoke                      # this CPU, under a minute: every code path, tiny sizes

A ``--n`` x 3 x ``--img-size``\\ :sup:`2` uint8 cache (20,000 x 256 px: 3.9 GB) is written directly as arrays
(``scale.synthetic_cache``: ``open_memmap``'s header, then chunks of rows) in a temporary folder under ``--work``
(default: the system's temporary folder; the repository root when that is a tmpfs, where "cold" would mean
nothing) and deleted at the end. Every row trains ``--arch`` (random init) with batch ``--batch-size`` on
``source.take(train)`` (train: every row, shuffled), through smallct's own code:

* ``memory``: ``smallct.engine.train.fit`` on a ``MemorySource`` (the set as one tensor; on CUDA a copy on the
  device) with ``TrainConfig(amp=True)``, channels-last (``fit`` always uses it): the baseline of the ratios.
* ``disk warm``: ``fit`` on a ``DiskSource`` (memory-mapped; the next batches read by a thread into pinned memory),
  the file read into the page cache first.
* ``disk cold``: one whole epoch (``--cold-steps`` to cap it) on a ``DiskSource`` after ``posix_fadvise(DONTNEED)``
  of the file; the share of its pages still resident is shown (``fincore``; empty without it).
* ``... no AMP``: ``TrainConfig(amp=False)`` (float32).
* ``plain loop, channels-last`` / ``plain loop, NCHW``: ``fit`` has no switch for channels-last, so these two rows
  run a small loop that mirrors ``fit``'s step (same augmentation, normalisation, autocast, loss, optimiser and
  schedule; ``plain_epoch`` below) with and without ``channels_last``. The first checks the mirror against ``fit``
  (its ratio should be about 1); the second is the figure without channels-last.
* hooks: ``fit`` builds each step's indices on the device, and ``Subset.batches`` (a ``take``) brings them to the
  host (``.cpu()``: a wait for the GPU's queue) at every step; the memory source then copies them back (another
  wait). ``memory, no take``: ``fit`` on the ``MemorySource`` itself (the indices stay on the GPU, no wait).
  ``disk warm, host indices``: the index lists brought to the host once, before the first batch (what ``fit``
  could do once per epoch). Their ratios to the rows above say what those waits cost.
* ``... compiled``: ``TrainConfig(compile=True)`` (CUDA only; ``fit`` ignores it on a CPU); the compile's seconds
  are reported apart (the first ``--warmup`` steps' time minus the eager row's).

Each row: ``--warmup`` steps (cuDNN's autotuning, the device copy of the memory source, a compile), then
``--steps`` timed steps, with the GPU's queue drained at both ends. Reported per row: images/s and the ratio to
the baseline; ms per step; ``host wait``: the share of the wall time the host spends in ``next(batches)`` inside
``fit``; ``GPU wait``: the share of the wall time the GPU has nothing to do but the batch (CUDA events recorded
before and after each ``next(batches)``: on the GPU's timeline, from the end of the previous step's work to the
batch on the device; if the host runs ahead this is only the batch's copy). Rows that would pass ``--budget``
seconds are skipped (and say so). ``--smoke``: 256 images at 64 px, batch 16, a few steps, on the CPU.

Writes ``<--out>/gpu_sources-<device>.json`` (default ``bench/results``; ``gpu_sources-smoke-<device>.json`` with
``--smoke``).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from scale import StopSteps, drop_from_page_cache, resident, synthetic_cache  # noqa: E402

from smallct.config import TrainConfig  # noqa: E402
from smallct.data.augmentations import PER_IMAGE, augment_batch, mix_batch  # noqa: E402
from smallct.data.source import PREFETCH, BatchSource, DiskSource, MemorySource, available_memory  # noqa: E402
from smallct.data.transforms import augment, normalize  # noqa: E402
from smallct.engine.train import autocast, _correct, loss_function, fit, lr_factor, make_optimizer  # noqa: E402
from smallct.models import create_model, resolve_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
COMPILE_SECONDS = 90  # what a row that compiles may take beyond its steps (resnet18 on an H100: about a minute)


class Metered(BatchSource):
    """``source`` whose batches stop after ``steps`` (:class:`StopSteps` at the next request), timing each request.

    ``waits``: host seconds inside each ``next()``; ``gaps``: CUDA events before and after it; the GPU's queue is
    drained at request ``warmup`` (``t_start``) and at the last (``t_end``). ``host_index``: the index lists are
    brought to the host once, before the first batch, instead of at every step.
    """

    def __init__(self, source: BatchSource, steps: int | None, warmup: int, host_index: bool = False):
        self.source, self.steps, self.warmup, self.host_index = source, steps, warmup, host_index
        self.shape = source.shape
        self.waits: list[float] = []
        self.sizes: list[int] = []
        self.gaps: list = []
        self.t_start = self.t_end = None

    def read(self, index):
        return self.source.read(index)

    def batches(self, index_lists, device=None):
        cuda = device is not None and device.type == "cuda"
        if self.host_index:
            index_lists = [i.cpu().numpy() if isinstance(i, torch.Tensor) else i for i in index_lists]
        inner = iter(self.source.batches(index_lists, device))
        try:
            k = 0
            while True:
                if k == self.warmup:
                    self._drain(device)
                    self.t_start = time.perf_counter()
                if k == self.steps:
                    self._drain(device)
                    self.t_end = time.perf_counter()
                    raise StopSteps
                start = time.perf_counter()
                before = _event() if cuda else None
                try:
                    xb = next(inner)
                except StopIteration:  # asked for one batch more than there are
                    self._drain(device)
                    self.t_end = time.perf_counter()
                    return
                after = _event() if cuda else None
                self.waits.append(time.perf_counter() - start)
                self.sizes.append(len(xb))
                self.gaps.append((before, after))
                k += 1
                yield xb
        finally:
            getattr(inner, "close", lambda: None)()

    @staticmethod
    def _drain(device) -> None:
        if device is not None:
            _report.sync(device)

    def figures(self) -> dict:
        """Images/s, ms per step and the two wait shares of the timed steps (after ``warmup``)."""
        timed = len(self.waits) - self.warmup
        wall = self.t_end - self.t_start
        gaps = self.gaps[self.warmup:]
        gpu = (sum(a.elapsed_time(b) for a, b in gaps) / 1e3 / wall) if gaps and gaps[0][0] is not None else None
        images = sum(self.sizes[self.warmup:])
        return {"steps_timed": timed, "images_timed": images, "images_per_s": images / wall,
                "ms_per_step": wall / timed * 1e3, "host_wait_share": sum(self.waits[self.warmup:]) / wall,
                "gpu_wait_share": gpu, "timed_s": wall}


def _event():
    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e


def plain_epoch(model, x: BatchSource, y: torch.Tensor, cfg: TrainConfig, mean, std, device: torch.device,
                seed: int, channels_last: bool) -> None:
    """One epoch of ``fit``'s step, written out, with channels-last on or off (``fit`` always has it on).

    Mirrors ``smallct.engine.train.fit`` (no EMA, freezing, validation or bars, which these rows do not use):
    keep it in step with that loop (``tests/bench/test_gpu_sources.py`` checks that both give the same weights).
    """
    if cfg.mixup or cfg.cutmix or cfg.ema:
        raise ValueError("plain_epoch mirrors fit without mixup, cutmix or EMA: leave them at 0")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    y = y.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    n = len(x)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs if n % bs < 2 else n // bs + 1
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    loss_fn = loss_function("binary", cfg.label_smoothing)
    ingredients = {k: getattr(cfg, k) for k in PER_IMAGE}
    model.train()
    order = torch.randperm(n, generator=generator, device=device)
    steps = [order[b * bs:(b + 1) * bs] if b < steps_per_epoch - 1 else order[b * bs:] for b in range(steps_per_epoch)]
    images = x.batches(steps, device)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for b in range(steps_per_epoch):
        idx = steps[b]
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(cfg, b, steps_per_epoch * cfg.epochs, steps_per_epoch)
        xb = augment(next(images).float(), cfg.augment, generator)
        xb = augment_batch(xb, generator, **ingredients)
        xb, mix = mix_batch(xb, cfg.mixup, cfg.cutmix, generator)
        xb = normalize(xb, mean, std)
        xb = xb.contiguous(memory_format=torch.channels_last) if channels_last else xb.contiguous()
        yb = y[idx]
        with autocast(device, cfg.amp):
            logits = model(xb)
            loss = loss_fn(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(idx)
        correct += _correct(logits.detach(), yb, "binary")
    images.close()


# Each row: (label, source, how, options). how: "fit" or "plain"; options: amp, compile, channels_last, cold,
# host_index, no_take, same_model_as (a compiled row reuses another's compiled model: no second compile).
ROWS = [
    ("memory", "memory", "fit", {}),
    ("disk warm", "disk", "fit", {}),
    ("disk cold (whole epoch)", "disk", "fit", {"cold": True}),
    ("memory, no AMP", "memory", "fit", {"amp": False}),
    ("memory, plain loop, channels-last", "memory", "plain", {}),
    ("memory, plain loop, NCHW", "memory", "plain", {"channels_last": False}),
    ("memory, no take (hook)", "memory", "fit", {"no_take": True}),
    ("disk warm, host indices (hook)", "disk", "fit", {"host_index": True}),
    ("memory, compiled", "memory", "fit", {"compile": True}),
    ("disk warm, compiled", "disk", "fit", {"compile": True, "same_model_as": "memory, compiled"}),
]


def work_folder(parent: Path | None) -> tuple[Path, str]:
    """A fresh folder for the cache, and its file system's type (a tmpfs is memory: then the repository root)."""
    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    kind = fs_type(parent)
    if parent == Path(tempfile.gettempdir()) and kind in ("tmpfs", "ramfs"):
        parent, kind = ROOT, fs_type(ROOT)
    return Path(tempfile.mkdtemp(prefix=".gpu_sources-", dir=parent)), kind


def fs_type(path: Path) -> str:
    """The type of the file system holding ``path`` (the longest mount point of ``/proc/mounts`` above it)."""
    best, kind = "", "?"
    try:
        real = str(Path(path).resolve())
        with open("/proc/mounts") as fh:
            for line in fh:
                _, mount, fstype = line.split()[:3]
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def warm_file(path: Path) -> None:
    """Read the whole file once, into the page cache."""
    with open(path, "rb") as fh:
        while fh.read(64 * 2**20):
            pass


def run_row(label, store, how, opts, sources, train, y, weights, args, device, models) -> dict:
    """Train one row's steps; its figures."""
    gc.collect()
    cold = opts.get("cold", False)
    if store == "disk":
        if cold:
            drop_from_page_cache(sources["path"])
        else:
            warm_file(sources["path"])
        source = DiskSource(sources["path"], prefetch=args.prefetch)
    else:
        source = sources["memory"]
    row = {"row": label, "source": store, "how": how, "resident_share_before": resident(sources["path"])
           if store == "disk" else None}
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, amp=opts.get("amp", True),
                      compile=opts.get("compile", False))
    steps = (args.cold_steps or None) if cold else args.warmup + args.steps
    index, labels = (np.arange(len(source)), y) if opts.get("no_take") else (train, y[train])
    metered = Metered(source if opts.get("no_take") else source.take(index), steps, 0 if cold else args.warmup,
                      opts.get("host_index", False))
    model = models.get(opts.get("same_model_as"))
    if model is None:
        torch.manual_seed(args.seed)
        model = create_model(args.arch, 2, weights)
    if cfg.compile:
        models[label] = model
    _report.sync(device)
    start = time.perf_counter()
    try:
        if how == "fit":
            fit(model, metered, labels, cfg, weights.mean, weights.std, seed=args.seed, device=device,
                progress=False)
        else:
            plain_epoch(model, metered, labels, cfg, weights.mean, weights.std, device, args.seed,
                        opts.get("channels_last", True))
    except StopSteps:
        pass
    if metered.t_end is None:  # the epoch ended first (the cold row, or fewer rows than steps)
        _report.sync(device)
        metered.t_end = time.perf_counter()
    if metered.t_start is None:
        raise SystemExit(f"{label}: an epoch of {len(index)} images has fewer steps than --warmup {args.warmup}")
    row |= metered.figures()
    row |= {"startup_s": metered.t_start - start, "amp": amp_name(device, cfg.amp),
            "layout": "NCHW" if not opts.get("channels_last", True) else "channels-last",
            "compile": "on" if cfg.compile and device.type == "cuda" else ("ignored (cpu)" if cfg.compile else "off"),
            "host_index": opts.get("host_index", False)}
    return row


def amp_name(device: torch.device, amp: bool) -> str:
    """What ``fit``'s autocast does with ``amp`` on ``device`` (``smallct.engine.train.autocast``)."""
    if not amp:
        return "off"
    if device.type != "cuda":
        return "off (cpu)"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def estimate(opts: dict, args, step_s: float, n: int, device: torch.device, models: dict) -> float:
    """Seconds a row is expected to take, from the baseline's step (before it: a guess of 50 ms)."""
    steps = (args.cold_steps or -(-n // args.batch_size)) if opts.get("cold") else args.warmup + args.steps
    seconds = 5 + steps * step_s * (4 if opts.get("amp") is False else 1) * (3 if opts.get("cold") else 1)
    if opts.get("compile") and device.type == "cuda" and opts.get("same_model_as") not in models:
        seconds += COMPILE_SECONDS
    return seconds


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="images in the cache (default 20,000: 3.9 GB at 256 px)")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", default="resnet18", help="a model name of smallct.models (random init)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps of each row")
    p.add_argument("--steps", type=int, default=150, help="timed steps of each row")
    p.add_argument("--cold-steps", type=int, default=0, help="steps of the cold row (0: a whole epoch)")
    p.add_argument("--prefetch", type=int, default=PREFETCH, help="batches the disk source reads ahead")
    p.add_argument("--budget", type=float, default=210, help="seconds: rows that would end later are skipped")
    p.add_argument("--rows", default="all", help="comma-separated row numbers, or all: "
                   + "; ".join(f"{i + 1} {label}" for i, (label, *_) in enumerate(ROWS)))
    p.add_argument("--work", type=Path, help="folder for the cache (default: the system's temporary folder)")
    p.add_argument("--out", type=Path, help="folder of the JSON file (default bench/results)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: as torch has it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (256 images, 64 px, batch 16, "
                                                          "2 + 3 steps): checks every code path in under a minute")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.img_size, args.batch_size, args.warmup, args.steps = 256, 64, 16, 2, 3
        args.budget = 60
        args.device = "cpu" if args.device == "auto" else args.device
        args.threads = args.threads or 1
    return args


def main(argv=None) -> int:
    began = time.perf_counter()
    args = parse(argv)
    device = _report.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    picked = range(len(ROWS)) if args.rows == "all" else [int(r) - 1 for r in args.rows.split(",")]
    work, fs = work_folder(args.work)
    row_bytes = 3 * args.img_size**2
    n, notes = args.n, []
    room = min((shutil.disk_usage(work).free - 2 * GiB), available_memory() // 2) // row_bytes
    if room < n:
        notes.append(f"--n {n} does not fit the free disk or half the available memory: {room} images")
        n = int(room)
    if fs in ("tmpfs", "ramfs"):
        notes.append(f"the cache is on a {fs}: the cold row reads memory, not a disk")
    if device.type != "cuda":
        notes.append("on a CPU, fit ignores amp and compile: those rows measure the same thing as the baseline")
    notes.append("channels-last on/off: fit always uses channels-last, so the two 'plain loop' rows use a loop "
                 "that mirrors fit's step (plain_epoch); compare them with each other")
    print(f"gpu_sources: {device}, {args.arch}, batch {args.batch_size}, {n} x 3 x {args.img_size}^2 cache in "
          f"{work} ({fs})", flush=True)
    rows, skipped = [], []
    payload = {"settings": {"n": n, "img_size": args.img_size, "batch_size": args.batch_size, "arch": args.arch,
                            "warmup": args.warmup, "steps": args.steps, "cold_steps": args.cold_steps,
                            "prefetch": args.prefetch, "seed": args.seed, "smoke": args.smoke,
                            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                                     "matmul": torch.backends.cuda.matmul.allow_tf32}},
               "cache": {"gb": n * row_bytes / 1e9, "fs": fs}, "rows": rows, "skipped": skipped, "notes": notes}
    info = _report.machine(device)

    def save() -> Path:  # after every row: a run stopped at its time limit keeps the rows it finished
        ratios(rows)
        payload["seconds"] = time.perf_counter() - began
        return _report.write("gpu_sources-smoke" if args.smoke else "gpu_sources", device, payload, out=args.out,
                             info=info)

    try:
        path = work / "images.npy"
        payload["cache"]["write_s"] = synthetic_cache(path, n, args.img_size)
        start = time.perf_counter()
        sources = {"path": path, "memory": MemorySource(torch.from_numpy(np.load(path)))}
        payload["cache"]["load_s"] = time.perf_counter() - start
        # the memory source's one copy to the device, outside every row's warm-up
        payload["cache"]["to_device_s"] = _report.timed(lambda: sources["memory"].on(device), device)
        print(f"  cache: {payload['cache']['gb']:.2f} GB written in {payload['cache']['write_s']:.1f} s, read into "
              f"memory in {payload['cache']['load_s']:.1f} s, to {device} in {payload['cache']['to_device_s']:.1f} s",
              flush=True)
        train = np.random.default_rng(args.seed).permutation(n)
        y = torch.as_tensor(np.random.default_rng(args.seed + 1).integers(0, 2, n))
        weights = resolve_weights(args.arch, "none")
        models: dict = {}
        step_s = 0.05
        for label, store, how, opts in (ROWS[i] for i in picked):
            need = estimate(opts, args, step_s, n, device, models)
            left = args.budget - (time.perf_counter() - began)
            if need > left:
                skipped.append({"row": label, "why": f"about {need:.0f} s needed, {left:.0f} s of --budget left"})
                print(f"  {label}: skipped ({skipped[-1]['why']})", flush=True)
                continue
            try:
                row = run_row(label, store, how, opts, sources, train, y, weights, args, device, models)
            except Exception as exc:  # a compile that fails on this machine: say so, go on with the others
                if not opts.get("compile"):
                    raise
                skipped.append({"row": label, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                print(f"  {label}: failed ({skipped[-1]['why']})", flush=True)
                continue
            rows.append(row)
            if label == "memory":
                step_s = row["ms_per_step"] / 1e3
            print(f"  {label}: {row['images_per_s']:.0f} images/s, host wait {row['host_wait_share']:.1%}"
                  + (f", GPU wait {row['gpu_wait_share']:.1%}" if row["gpu_wait_share"] is not None else ""),
                  flush=True)
            save()
    finally:
        sources = None
        gc.collect()
        shutil.rmtree(work, ignore_errors=True)
    out = save()
    columns = [("row", "row", ""), ("amp", "amp", ""), ("layout", "layout", ""), ("compile", "compile", ""),
               ("images_per_s", "img/s", "{:.0f}"), ("ratio", "x base", "{:.2f}"), ("ms_per_step", "ms/step", "{:.1f}"),
               ("host_wait_share", "host wait", "{:.1%}"), ("gpu_wait_share", "GPU wait", "{:.1%}"),
               ("startup_s", "warm-up s", "{:.1f}"), ("compile_s", "compile s", "{:.1f}"),
               ("resident_share_before", "resident", "{:.0%}")]
    print()
    print(_report.table(rows, columns))
    for s in skipped:
        print(f"skipped: {s['row']}: {s['why']}")
    for note in notes:
        print(f"note: {note}")
    print(f"\n{time.perf_counter() - began:.0f} s; wrote {out}")
    return 0


def ratios(rows: list[dict]) -> None:
    """Each row's images/s over the baseline's (``memory``), and a compiled row's compile seconds (its warm-up's
    time minus that of the same source's eager row)."""
    by = {r["row"]: r for r in rows}
    base = by.get("memory")
    for r in rows:
        r["ratio"] = r["images_per_s"] / base["images_per_s"] if base else None
        if r["compile"] == "on":
            eager = by.get("memory" if r["source"] == "memory" else "disk warm")
            r["compile_s"] = r["startup_s"] - eager["startup_s"] if eager else None


if __name__ == "__main__":
    sys.exit(main())
