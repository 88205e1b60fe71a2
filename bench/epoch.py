"""Time per training epoch: the smallct pipeline against the seed notebook's, alternated in one process.

    python bench/epoch.py                                   # resnet18, 128 px, batch 32, this device
    python bench/epoch.py --arch resnet152 --img-size 224   # a GPU-sized model
    python bench/epoch.py --compile                         # also smallct with torch.compile (CUDA)

Pipelines, all with the same model (random init), optimiser (AdamW of ``TrainConfig``), image size,
batch size, device and augmentation (flip + rotation/scale/shift), over every image of ``--data``:

* ``notebook, workers=0`` / ``workers=2``: the seed notebook's way. A torch ``Dataset`` opens each
  PNG with PIL in ``__getitem__``, converts it to RGB and applies torchvision transforms (Resize,
  RandomHorizontalFlip, RandomAffine, ToTensor, Normalize); a ``DataLoader(shuffle=True)`` with 0,
  then 2 worker processes; float32 on the device, as the notebook had it.
* ``smallct``: ``smallct.engine.train.fit`` for one epoch on the decoded uint8 cache (already on the
  device), batched augmentation there, channels_last; on CUDA bf16 autocast and cuDNN benchmark
  (which, once ``fit`` has set it, speeds the notebook rows' convolutions too: in their favour).
* on CUDA also ``smallct, no amp`` (float32), which separates the pipeline's gain from mixed
  precision, and with ``--compile`` ``smallct, compiled``.

After one warm-up epoch of each, ``--rounds`` rounds run one epoch of every pipeline in turn; the
table shows the median epoch and the ratio of each baseline's median to smallct's, in wall time and
in CPU seconds (this process and its finished DataLoader workers: steadier than wall time when other
jobs share the machine). Also reported: one pass of the notebook Dataset alone (the decoding and
transforms an epoch pays for), smallct's one-time cache build and its read-back, and the floor: the
model's FLOPs per training image (forward + backward, counted by ``torch.utils.flop_counter``) times
images per epoch, over the measured matrix-product rate of the device (bf16 on a GPU with autocast, else float32).

Writes ``bench/results/epoch-<device>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from smallct.config import TrainConfig  # noqa: E402
from smallct.data import augment, load_images, normalize  # noqa: E402
from smallct.datasets import load_dataset  # noqa: E402
from smallct.engine import fit, make_optimizer  # noqa: E402
from smallct.models import create_model, resolve_weights  # noqa: E402


class NotebookDataset(torch.utils.data.Dataset):
    """The seed notebook's Dataset: every item opens, converts and transforms its PNG again."""

    def __init__(self, files, labels, size: int, mean, std):
        from torchvision import transforms as T

        self.files, self.labels = list(files), np.asarray(labels)
        self.transform = T.Compose([
            T.Resize((size, size)),
            T.RandomHorizontalFlip(),
            T.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        image = Image.open(self.files[i]).convert("RGB")
        return self.transform(image), int(self.labels[i])


def notebook_epoch(model: nn.Module, loader, optimizer, loss_fn, device: torch.device) -> float:
    """One epoch written as the notebook wrote it; returns the mean training loss."""
    model.train()
    running_loss, corrects, seen = 0.0, 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_fn(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * inputs.size(0)
        corrects += (outputs.argmax(1) == labels).sum().item()
        seen += inputs.size(0)
    return running_loss / seen


def flops_per_image(model: nn.Module, size: int, batch: int, device: torch.device) -> float:
    """FLOPs of one training image: forward + backward of a batch, counted by FlopCounterMode, / batch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matrix product on ``device`` (best of a few)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps = 20 if device.type == "cuda" else 3
    best = min(_report.timed(lambda: [a @ b for _ in range(reps)], device) for _ in range(3)) / reps
    return 2 * n**3 / best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/epoch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=_report.default_data(), help="labelled PNG folder (default Head CT)")
    p.add_argument("--arch", default="resnet18", help="model (default resnet18, random init)")
    p.add_argument("--img-size", type=int, default=128, help="side in px (default 128)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--rounds", type=int, default=0, help="timed epochs per pipeline (default 3 on CPU, 5 on CUDA)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: torch's own, one per core); 1 is steadier on a busy shared machine")
    p.add_argument("--compile", action="store_true", help="also time smallct with torch.compile (CUDA)")
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder of the JSON result")
    args = p.parse_args(argv)
    device = _report.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = _report.machine(device)
    rounds = args.rounds or (5 if device.type == "cuda" else 3)
    dataset = load_dataset(args.data)
    source = resolve_weights(args.arch, "none")
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size)
    n, size, bs = len(dataset), args.img_size, args.batch_size
    print(f"epoch benchmark: {args.arch} at {size} px, batch {bs}, {n} images, {device.type} "
          f"({info.get('gpu', info['cpu'])}, {info['torch_threads']} torch threads), {rounds} rounds", flush=True)

    # smallct's one-time cost: decode into the cache (every core), then read it back from disk
    with tempfile.TemporaryDirectory() as tmp:
        build = _report.timed(lambda: load_images(dataset.files, size, cache=Path(tmp), progress=False))
        start = time.perf_counter()
        x = load_images(dataset.files, size, cache=Path(tmp), progress=False)
        reread = time.perf_counter() - start
    x, y = x.to(device), torch.as_tensor(dataset.labels).to(device)

    notebook_set = NotebookDataset(dataset.files, dataset.labels, size, source.mean, source.std)
    dataset_pass = _report.timed(lambda: [notebook_set[i] for i in range(n)])
    loaders = {w: torch.utils.data.DataLoader(notebook_set, batch_size=bs, shuffle=True, num_workers=w)
               for w in (0, 2)}

    def model_and_optimizer():
        torch.manual_seed(0)
        model = create_model(args.arch, len(dataset.class_names), source).to(device)
        return model, make_optimizer(model, cfg)

    loss_fn = nn.CrossEntropyLoss()
    pipelines = {}
    for w, loader in loaders.items():
        model, optimizer = model_and_optimizer()
        pipelines[f"notebook, workers={w}"] = (
            lambda model=model, optimizer=optimizer, loader=loader: notebook_epoch(model, loader, optimizer,
                                                                                   loss_fn, device))
    variants = {"smallct": cfg}
    if device.type == "cuda":
        variants["smallct, no amp"] = TrainConfig(epochs=1, batch_size=bs, amp=False)
        if args.compile:
            variants["smallct, compiled"] = TrainConfig(epochs=1, batch_size=bs, compile=True)
    seeds = itertools.count()  # a fresh augmentation draw every epoch
    for name, vcfg in variants.items():
        model, _ = model_and_optimizer()
        pipelines[name] = (lambda model=model, vcfg=vcfg: fit(model, x, y, vcfg, source.mean, source.std,
                                                              seed=next(seeds), device=device, progress=False))

    times: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    warmup = {}
    for r in range(rounds + 1):
        for name, run in pipelines.items():
            cpu_start = _report.cpu_seconds()
            seconds = _report.timed(run, device)
            if r == 0:
                warmup[name] = seconds
            else:
                times[name].append(seconds)
                cpu[name].append(_report.cpu_seconds() - cpu_start)
        if r:
            print(f"  round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s ({cpu[k][-1]:.1f} CPU s)"
                                             for k, v in times.items()), flush=True)

    # where smallct's epoch goes besides the model: slicing, augmenting and normalising every batch
    g = torch.Generator(device=device).manual_seed(0)
    augment_pass = _report.timed(lambda: [normalize(augment(x[i:i + bs].float(), "affine", g), source.mean, source.std)
                                          for i in range(0, n, bs)], device)

    # the floor: FLOPs of an epoch at the device's matrix-product rate
    model, _ = model_and_optimizer()
    flops = flops_per_image(model, size, bs, device)
    amp_dtype = None
    if device.type == "cuda" and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    rate = matmul_rate(device, amp_dtype or torch.float32)
    floor = flops * n / rate

    smallct = _report.median(times["smallct"])
    smallct_cpu = _report.median(cpu["smallct"])
    rows = []
    for name, ts in times.items():
        med = _report.median(ts)
        rows.append({"pipeline": name, "median_s": med, "min_s": min(ts), "max_s": max(ts), "warmup_s": warmup[name],
                     "images_per_s": n / med, "vs_smallct": med / smallct, "over_floor": med / floor,
                     "cpu_median_s": _report.median(cpu[name]),
                     "cpu_vs_smallct": _report.median(cpu[name]) / smallct_cpu, "epochs_s": ts,
                     "epochs_cpu_s": cpu[name]})
    print()
    print(_report.table(rows, [("pipeline", "pipeline", ""), ("median_s", "median s", "{:.3f}"),
                               ("min_s", "min s", "{:.3f}"), ("max_s", "max s", "{:.3f}"),
                               ("warmup_s", "warm-up s", "{:.2f}"), ("images_per_s", "img/s", "{:.1f}"),
                               ("vs_smallct", "x smallct", "{:.2f}"), ("over_floor", "x floor", "{:.1f}"),
                               ("cpu_median_s", "CPU s", "{:.1f}"), ("cpu_vs_smallct", "CPU x smallct", "{:.2f}")]))
    base0 = _report.median(times["notebook, workers=0"])
    print(f"\nnotebook Dataset alone, one pass (PIL decode + transforms): {dataset_pass:.2f} s = "
          f"{dataset_pass / base0:.0%} of a workers=0 notebook epoch")
    print(f"smallct batches alone, one pass (slice + augment + normalise): {augment_pass:.3f} s = "
          f"{augment_pass / smallct:.0%} of a smallct epoch")
    print(f"smallct cache: built in {build:.2f} s (every core, once per image size), read back in {reread:.3f} s")
    print(f"floor: {flops / 1e9:.2f} GFLOP per training image x {n} images / "
          f"{rate / 1e12:.2f} TFLOP/s ({'bf16' if amp_dtype == torch.bfloat16 else 'fp16' if amp_dtype else 'fp32'} "
          f"matmul) = {floor:.3f} s; smallct epoch = {smallct / floor:.1f} x floor")
    print(f"speed-up of smallct: {base0 / smallct:.2f}x over the notebook with workers=0, "
          f"{_report.median(times['notebook, workers=2']) / smallct:.2f}x with workers=2 (wall); in CPU seconds "
          f"{_report.median(cpu['notebook, workers=0']) / smallct_cpu:.2f}x and "
          f"{_report.median(cpu['notebook, workers=2']) / smallct_cpu:.2f}x")
    path = _report.write("epoch", device, {
        "arch": args.arch, "img_size": size, "batch_size": bs, "images_per_epoch": n, "rounds": rounds,
        "rows": rows,
        "speedup_vs_notebook_workers0": base0 / smallct,
        "speedup_vs_notebook_workers2": _report.median(times["notebook, workers=2"]) / smallct,
        "cpu_seconds_ratio_vs_notebook_workers0": _report.median(cpu["notebook, workers=0"]) / smallct_cpu,
        "cpu_seconds_ratio_vs_notebook_workers2": _report.median(cpu["notebook, workers=2"]) / smallct_cpu,
        "notebook_dataset_pass_s": dataset_pass, "notebook_dataset_share_of_epoch": dataset_pass / base0,
        "smallct_batches_pass_s": augment_pass, "smallct_batches_share_of_epoch": augment_pass / smallct,
        "cache_build_s": build, "cache_read_s": reread,
        "floor": {"flops_per_training_image": flops, "matmul_flops_per_s": rate,
                  "matmul_dtype": str(amp_dtype or torch.float32), "epoch_floor_s": floor,
                  "smallct_over_floor": smallct / floor},
    }, args.out, info)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
