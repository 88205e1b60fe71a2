"""Cross-validated transfer learning: ``python -m smallct.cv``.

:func:`run_cv` is the library API (notebooks call it); :func:`main` only parses flags into a
:class:`~smallct.config.CVConfig`. The run folder it writes is a contract read by prediction,
tuning, comparison and the notebooks:

``run.json``      everything needed to rebuild and apply a fold model (written first)
``folds/``        one JSON per finished fold (probabilities, history, metrics): resume skips these
``checkpoints/``  one ``r{repeat}_f{fold}.pt`` per fold: ``{"model": state_dict, ...run facts}``
``oof.csv``       out-of-fold predictions: id, label, prob, pred, fold, repeat
``history.csv``   per-epoch train and test-fold loss/accuracy (test-fold columns unless ``--no-test-curves``),
                  with ``curves.png``
``results.json``  per-fold metrics, mean and std over folds, pooled out-of-fold metrics with 95% CI
``roc.png``, ``confusion.png``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import smallct
from smallct import plots
from smallct.audit import size_note
from smallct.cache import cache_dir, load_images
from smallct.config import CVConfig, DataConfig, TrainConfig, to_dict
from smallct.duplicates import near_duplicate_groups
from smallct.labels import Dataset, load_dataset
from smallct.metrics import bootstrap_ci, classification_metrics, summarize_folds
from smallct.models import create_model
from smallct.splits import fold_assignment
from smallct.train import fit, predict_proba, resolve_device, time_training_step
from smallct.weights import WeightSource, resolve_weights

# Architectures that are slow on a CPU (resnet152 trains at about 2 images/s on a 2-core machine).
LARGE_ON_CPU = ("resnet101", "resnet152", "resnet50", "resnext", "wide_resnet", "vit_", "convnext", "efficientnet_b")
SETTINGS_THAT_CHANGE_RESULTS = ("arch", "weights", "task", "folds", "repeats", "seed", "data", "train")


@dataclass
class CVResult:
    """What :func:`run_cv` returns: the run folder and its main tables."""

    out: Path
    results: dict
    oof: pd.DataFrame
    history: pd.DataFrame


def phantom_dataset(n: int = 200, seed: int = 0, log=print) -> Dataset:
    """The embedded default: a synthetic head-CT phantom set written once into the cache folder."""
    from smallct.phantom import write_phantom_png_set

    folder = cache_dir() / f"phantom-n{n}-s{seed}"
    if not (folder / "labels.csv").is_file():
        write_phantom_png_set(folder, n=n, seed=seed)
    log(f"SYNTHETIC DATA: no --data given, so this run uses {n} generated head-CT phantom images in {folder}. "
        "For the real Kaggle Head CT set pass --data DIR (the folder with 000.png..199.png and labels.csv).")
    return load_dataset(folder)


def load_data(cfg: CVConfig, log=print) -> Dataset:
    if cfg.data.data is None:
        return phantom_dataset(cfg.data.phantom_n, cfg.seed, log)
    return load_dataset(cfg.data.data, cfg.data.labels, cfg.data.id_col, cfg.data.label_col)


def _versions() -> dict:
    import torchvision

    out = {"smallct": smallct.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "python": platform.python_version()}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def atomic_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON through a temporary file, so that a reader never sees half a file."""
    # several processes (tuning workers) may write the same report: each through its own temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def build_run_record(cfg: CVConfig, dataset: Dataset, source: WeightSource, img_size: int,
                     folds: np.ndarray) -> dict:
    """The content of ``run.json``: enough to rebuild and apply every fold model."""
    return {
        "config": to_dict(cfg),
        "arch": cfg.arch,
        "task": dataset.task,
        "num_outputs": len(dataset.class_names),
        "class_names": dataset.class_names,
        "weights": source.to_dict(),
        "input": {"img_size": img_size, "resize": cfg.data.resize, "crop": cfg.data.crop,
                  "mean": list(source.mean), "std": list(source.std),
                  "channels": dataset.meta.get("channels", "RGB uint8 from smallct.ingest.prepare"),
                  "windows": dataset.meta.get("windows"),
                  # side (px) of the PNGs smallct.prepare made from DICOM: predict repeats it for .dcm input
                  "prepared_size": dataset.meta.get("size")},
        "tta": cfg.train.tta,
        "seed": cfg.seed,
        "data": {"source": dataset.source, "n_images": len(dataset), "synthetic": cfg.data.data is None},
        "folds": {"ids": dataset.ids, "assignment": folds.tolist()},
        "versions": _versions(),
    }


def check_resume(out: Path, record: dict) -> bool:
    """True when ``out`` holds the same run (resume it); ``ValueError`` when it holds another."""
    path = out / "run.json"
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    changed = [k for k in SETTINGS_THAT_CHANGE_RESULTS if old["config"].get(k) != record["config"].get(k)]
    if old["folds"] != record["folds"]:
        changed.append("fold assignment (data)")
    if changed:
        raise ValueError(f"{out}: holds a run with other settings ({', '.join(changed)}); "
                         "use another --out, or delete the folder to start again")
    return True


def _fold_name(repeat: int, fold: int) -> str:
    return f"r{repeat}_f{fold}"


def estimate_seconds(model, images, labels, cfg: CVConfig, source, task, device, n_train, n_test,
                     n_fits) -> tuple[float, float]:
    """Expected wall time (s) of ``n_fits`` fits and the training rate (images/s), from a few timed steps."""
    y = torch.as_tensor(labels[: cfg.train.batch_size])
    per_image = time_training_step(model, images[: cfg.train.batch_size], y, cfg.train, source.mean, source.std,
                                   task, device)
    # evaluation (forward only, about a third of a training step) of the test fold: after every epoch for the
    # curves, and once at the end, with TTA
    evaluations = (cfg.train.epochs if cfg.test_curves else 0) + 1 + cfg.train.tta
    per_fit = per_image * (cfg.train.epochs * n_train + evaluations * n_test / 3)
    return per_fit * n_fits, 1.0 / per_image


def fmt_duration(seconds: float) -> str:
    """A duration for people: ``42 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def make_folds(cfg: CVConfig, dataset: Dataset, progress: bool = True, log=print) -> tuple[np.ndarray, dict]:
    """The test-fold assignment (repeats, N) of a run, near-duplicates kept together, and the pairs linked."""
    groups, similar = near_duplicate_groups(dataset, cfg.data.group_similar, cfg.data.resize, cfg.data.crop,
                                            cfg.workers, progress, log)
    folds = fold_assignment(dataset.labels, cfg.folds, cfg.repeats, cfg.seed, groups)
    return folds, {"threshold": cfg.data.group_similar,
                   "pairs": [[dataset.ids[i], dataset.ids[j], round(c, 4)] for i, j, c in similar]}


def run_cv(cfg: CVConfig, dataset: Dataset | None = None, progress: bool = True, log=print,
           on_epoch=None, estimate: bool = True, images: torch.Tensor | None = None) -> CVResult:
    """Run (or resume) a cross-validation and write the run folder ``cfg.out``.

    ``on_epoch(repeat, fold, record)`` is called after every epoch (a tuner reports to its pruner
    there). ``estimate=False`` skips the timed steps of the duration estimate (a tuner's trials).
    ``images`` (N, 3, S, S) uint8 are ``dataset``'s images already decoded as ``cfg.data`` says
    (smallct.nested passes slices of its own); by default they are decoded (and cached) here.
    Returns a :class:`CVResult`.
    """
    source = resolve_weights(cfg.arch, cfg.weights)  # before any work: no weights, no run
    dataset = dataset if dataset is not None else load_data(cfg, log)
    if cfg.task is not None and cfg.task != dataset.task:
        raise ValueError(f"--task {cfg.task}: the data ({dataset.source}) is a {dataset.task} task")
    device = resolve_device(cfg.device)
    img_size = cfg.data.img_size or source.input_size
    if images is None:
        images = load_images(dataset.files, img_size, cfg.data.resize, cfg.data.crop, workers=cfg.workers,
                             progress=progress)
    elif tuple(images.shape) != (len(dataset), 3, img_size, img_size):
        raise ValueError(f"images: shape {tuple(images.shape)}, expected {(len(dataset), 3, img_size, img_size)}")
    folds, similar = make_folds(cfg, dataset, progress, log)
    out = Path(cfg.out)
    record = build_run_record(cfg, dataset, source, img_size, folds)
    record["similar_images"] = similar
    if (out / "nested.json").is_file():  # its results.json and oof.csv carry more than a cv run's
        raise ValueError(f"{out}: holds a smallct.nested run; use another --out")
    resuming = check_resume(out, record)
    (out / "folds").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    if not resuming:
        atomic_json(out / "run.json", record)
    labels = torch.as_tensor(dataset.labels)
    todo = [(r, k) for r in range(cfg.repeats) for k in range(cfg.folds)
            if not (out / "folds" / f"{_fold_name(r, k)}.json").is_file()]
    done = cfg.repeats * cfg.folds - len(todo)
    log(f"smallct.cv: {cfg.arch} ({source.description}), {len(dataset)} images at {img_size} px, "
        f"{cfg.folds} folds x {cfg.repeats} repeats, {cfg.train.epochs} epochs on {device.type}"
        + (f"; resuming: {done} folds already done" if done else ""))
    note = size_note(dataset.files, cfg.data.data) if cfg.data.data is not None else None
    if note:  # one pointer line; the audit itself is smallct.audit
        log(note)

    if todo and estimate:
        model = create_model(cfg.arch, len(dataset.class_names), source)
        n_test = len(dataset) / cfg.folds
        seconds, rate = estimate_seconds(model, images, dataset.labels, cfg, source, dataset.task, device,
                                         len(dataset) - n_test, n_test, len(todo))
        log(f"estimated duration: about {fmt_duration(seconds)} ({rate:.1f} training images/s on {device.type})")
        if device.type == "cpu" and (seconds > 1800 or cfg.arch.startswith(LARGE_ON_CPU)):
            log(f"note: {cfg.arch} is slow on a CPU ({rate:.1f} images/s here); for a quick answer use a smaller "
                "architecture (--arch resnet18 or tf_efficientnet_lite0), a smaller --img-size, or a GPU.")
        del model

    start = time.perf_counter()
    for r, k in todo:
        test = np.flatnonzero(folds[r] == k)
        train = np.flatnonzero(folds[r] != k)
        train_fold(cfg, dataset, source, images, labels, r, k, train, test, device, img_size, out, progress,
                   on_epoch)
    return finish_run(out, dataset, cfg, log=log, seconds=time.perf_counter() - start)


def train_fold(cfg, dataset, source, images, labels, r, k, train, test, device, img_size, out, progress, on_epoch,
               extra: dict | None = None) -> None:
    """Fit one fold model on ``train``, predict ``test``; write its checkpoint and ``folds/r{r}_f{k}.json``.

    ``extra`` is recorded in the fold file too (smallct.nested: the chosen settings and threshold).
    The fold file is written last: its presence means the fold is done.
    """
    fold_seed = cfg.seed * 1000 + r * 100 + k
    torch.manual_seed(fold_seed)
    model = create_model(cfg.arch, len(dataset.class_names), source)
    start = time.perf_counter()
    callback = None if on_epoch is None else (lambda rec: on_epoch(r, k, rec))
    history = fit(model, images[train], labels[train], cfg.train, source.mean, source.std, dataset.task,
                  seed=fold_seed, device=device, val=(images[test], labels[test]) if cfg.test_curves else None,
                  on_epoch=callback,
                  desc=f"repeat {r + 1}/{cfg.repeats} fold {k + 1}/{cfg.folds}", progress=progress)
    probs = predict_proba(model, images[test], source.mean, source.std, dataset.task, cfg.train.tta,
                          device=device, amp=cfg.train.amp)
    torch.save({"model": {k_: v.cpu() for k_, v in model.state_dict().items()}, "arch": cfg.arch,
                "num_outputs": len(dataset.class_names), "task": dataset.task, "class_names": dataset.class_names,
                "repeat": r, "fold": k, "img_size": img_size, "resize": cfg.data.resize, "crop": cfg.data.crop,
                "mean": list(source.mean), "std": list(source.std)},
               out / "checkpoints" / f"{_fold_name(r, k)}.pt")
    write_fold(out, dataset, r, k, test, probs, history, time.perf_counter() - start, extra)


def write_fold(out: Path, dataset: Dataset, r: int, k: int, test: np.ndarray, probs: np.ndarray,
               history: list[dict], seconds: float, extra: dict | None = None) -> None:
    """``folds/r{r}_f{k}.json``: the test fold's probabilities (n_test, C), metrics and training history."""
    y = dataset.labels[test]
    metrics = classification_metrics(y, probs) if dataset.task != "multilabel" else _multilabel_metrics(y, probs)
    atomic_json(out / "folds" / f"{_fold_name(r, k)}.json", {
        "repeat": r, "fold": k, "test_index": test.tolist(), "ids": [dataset.ids[i] for i in test],
        "probs": probs.tolist(), "history": history, "metrics": metrics, "seconds": seconds, **(extra or {})})


def _multilabel_metrics(y: np.ndarray, P: np.ndarray) -> dict:
    from smallct.rsna import multilabel_metrics

    return multilabel_metrics(y, P)


def finish_run(out: Path, dataset: Dataset, cfg: CVConfig, log=print, seconds: float = 0.0) -> CVResult:
    """Aggregate the per-fold files of a run into oof.csv, history.csv, results.json and the plots."""
    fold_files = sorted((out / "folds").glob("r*_f*.json"))
    folds = [json.loads(p.read_text()) for p in fold_files]
    multilabel = dataset.task == "multilabel"
    rows, hist = [], []
    for f in folds:
        for i, idx in enumerate(f["test_index"]):
            row = {"id": dataset.ids[idx]}
            p = f["probs"][i]
            if multilabel:
                for j, name in enumerate(dataset.class_names):
                    row[name] = int(dataset.labels[idx, j])
                for j, name in enumerate(dataset.class_names):
                    row[f"prob_{name}"] = p[j]
            else:
                row["label"] = int(dataset.labels[idx])
                if len(p) == 2:
                    row["prob"] = p[1]
                else:
                    row.update({f"prob_{c}": v for c, v in zip(dataset.class_names, p)})
                row["pred"] = int(np.argmax(p))
            row.update(fold=f["fold"], repeat=f["repeat"])
            rows.append(row)
        hist += [{"repeat": f["repeat"], "fold": f["fold"], **h} for h in f["history"]]
    oof = pd.DataFrame(rows).sort_values(["repeat", "fold", "id"]).reset_index(drop=True)
    history = pd.DataFrame(hist)
    oof.to_csv(out / "oof.csv", index=False)
    history.to_csv(out / "history.csv", index=False)

    results = aggregate_results(folds, dataset, cfg)
    results["seconds_this_session"] = seconds
    results["seconds_all_folds"] = float(sum(f["seconds"] for f in folds))
    atomic_json(out / "results.json", results)
    if len(history):
        plots.curves_plot(history, out / "curves.png")
    if not multilabel:
        if len(dataset.class_names) == 2:
            plots.roc_plot(oof, out / "roc.png")
        plots.confusion_plot(oof["label"].to_numpy(), oof["pred"].to_numpy(), dataset.class_names,
                             out / "confusion.png")
    log(format_table(results))
    log(f"run folder: {out}")
    return CVResult(out, results, oof, history)


def _stack_probs(folds: list[dict], n: int, repeats: int) -> np.ndarray:
    """(repeats, N, C) out-of-fold probabilities."""
    width = len(folds[0]["probs"][0])
    P = np.full((repeats, n, width), np.nan)
    for f in folds:
        P[f["repeat"], f["test_index"]] = np.asarray(f["probs"])
    return P


def aggregate_results(folds: list[dict], dataset: Dataset, cfg: CVConfig) -> dict:
    """Per-fold metrics, mean and std over folds, and pooled out-of-fold metrics with a bootstrap CI.

    With repeats, a pooled metric is the mean over repeats of the metric of that repeat's pooled
    out-of-fold predictions, and the bootstrap resamples images (the same ones in every repeat).
    """
    complete = len(folds) == cfg.folds * cfg.repeats
    per_fold = [{"repeat": f["repeat"], "fold": f["fold"], "n_test": len(f["test_index"]), **f["metrics"]}
                for f in folds]
    metric_names = [k for k in folds[0]["metrics"] if isinstance(folds[0]["metrics"][k], (int, float))]
    results = {
        "task": dataset.task,
        "arch": cfg.arch,
        "weights": cfg.weights,
        "n_images": len(dataset),
        "folds": cfg.folds,
        "repeats": cfg.repeats,
        "complete": complete,
        "per_fold": per_fold,
        "mean_std_over_folds": summarize_folds([{k: f[k] for k in metric_names} for f in per_fold]),
        "selection": ("the model after the last epoch is evaluated; nothing (epoch, threshold, setting) is chosen "
                      "on a test fold; threshold 0.5 is fixed"),
        "settings_source": cfg.params_source or "command line and defaults (not tuned on these folds)",
    }
    if complete:
        y = dataset.labels
        P = _stack_probs(folds, len(dataset), cfg.repeats)
        if dataset.task == "multilabel":
            from smallct.rsna import multilabel_metrics as metric
        else:
            metric = classification_metrics

        def fn(yy, idx):
            per_repeat = [metric(yy, P[r, idx]) for r in range(cfg.repeats)]  # once per repeat, not per figure
            return {k: np.mean([m[k] for m in per_repeat]) for k in metric_names}
        idx_all = np.arange(len(dataset))
        results["pooled_oof"] = fn(y, idx_all)
        ci_metrics = [m for m in metric_names if m in ("accuracy", "balanced_accuracy", "roc_auc",
                                                        "weighted_log_loss", "mean_auc")]
        ci = bootstrap_ci(y, idx_all, lambda yy, ii: {m: v for m, v in fn(yy, ii).items() if m in ci_metrics},
                          n_boot=1000, seed=cfg.seed)
        ci = {k: list(v) for k, v in ci.items()}
        results["pooled_oof_ci95"] = ci
        results["ci_method"] = "percentile bootstrap over images (1000 resamples) of pooled out-of-fold predictions"
    return results


def format_table(results: dict) -> str:
    """The compact table printed at the end of a run."""
    names = [m for m in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "f1",
                         "log_loss", "weighted_log_loss", "mean_auc") if m in results["mean_std_over_folds"]]
    short = {"accuracy": "acc", "balanced_accuracy": "bal_acc", "roc_auc": "auc", "sensitivity": "sens",
             "specificity": "spec", "log_loss": "logloss", "weighted_log_loss": "wlogloss", "mean_auc": "mean_auc"}
    head = f"{'fold':>8} " + " ".join(f"{short.get(n, n):>9}" for n in names)
    lines = [head]
    for f in results["per_fold"]:
        lines.append(f"{'r%d f%d' % (f['repeat'], f['fold']):>8} " + " ".join(f"{f[n]:>9.3f}" for n in names))
    ms = results["mean_std_over_folds"]
    lines.append(f"{'mean':>8} " + " ".join(f"{ms[n]['mean']:>9.3f}" for n in names))
    lines.append(f"{'std':>8} " + " ".join(f"{ms[n]['std']:>9.3f}" for n in names))
    if "pooled_oof" in results:
        lines.append(f"{'pooled':>8} " + " ".join(f"{results['pooled_oof'][n]:>9.3f}" for n in names))
        for n, (lo, hi) in results["pooled_oof_ci95"].items():
            lines.append(f"pooled out-of-fold {n}: {results['pooled_oof'][n]:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    return "\n".join(lines)


def comma_list(kind=str):
    """An argparse ``type`` for comma-separated values: ``--shots 1,5,10`` -> ``[1, 5, 10]``."""
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def add_data_arguments(p: argparse.ArgumentParser, img_size_help: str, folds: bool = True):
    """The data flags every CLI over a labelled image set shares (``--group-similar`` when it makes folds);
    returns the argument group, for a command's own data flags."""
    d = DataConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="image folder (with labels.csv, or one sub-folder per class)")
    g.add_argument("--labels", type=Path, help="labels CSV (default DATA/labels.csv)")
    g.add_argument("--id-col", help="id column of the labels CSV (default: 'id' or the first column)")
    g.add_argument("--label-col", help="label column of the labels CSV (default: the other column)")
    g.add_argument("--img-size", type=int, help=img_size_help)
    g.add_argument("--resize", choices=["pad", "squash"], default=d.resize,
                   help="pad: keep aspect ratio, pad with black (default); squash: stretch")
    g.add_argument("--crop", action=argparse.BooleanOptionalAction, default=d.crop,
                   help="crop the black border around the head first (default on)")
    if folds:
        g.add_argument("--group-similar", type=float, default=d.group_similar, metavar="CORR",
                       help="keep images whose 64 px thumbnails correlate >= CORR in one fold (near-duplicates, "
                            f"neighbouring slices of one patient; default {d.group_similar}; 0 turns it off)")
    return g


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The :class:`DataConfig` of :func:`add_data_arguments`' flags."""
    group_similar = getattr(args, "group_similar", DataConfig.group_similar)
    return DataConfig(data=args.data, labels=args.labels, id_col=args.id_col, label_col=args.label_col,
                      img_size=args.img_size, resize=args.resize, crop=args.crop,
                      group_similar=group_similar or None)


def build_parser() -> argparse.ArgumentParser:
    t, c = TrainConfig(), CVConfig()
    p = argparse.ArgumentParser(
        prog="python -m smallct.cv",
        description="Cross-validated transfer learning on a small labelled image set. Without --data it runs on a "
                    "generated synthetic head-CT phantom set (no download).")
    g = add_data_arguments(p, "square input size in px (default: the weights' own input size)")
    g.add_argument("--task", choices=["binary", "multiclass", "multilabel"], default=None,
                   help="default: from the data (multilabel for a prepared RSNA folder)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=c.arch, help="resnet18..resnet152, any torchvision or timm model name")
    m.add_argument("--weights", default=c.weights, help="imagenet (default), none (random init), or a PATH")
    m.add_argument("--freeze-epochs", type=int, default=t.freeze_epochs, help="train only the head for N epochs first")
    m.add_argument("--backbone-lr-mult", type=float, default=t.backbone_lr_mult,
                   help="backbone learning rate = lr x this (discriminative learning rates)")
    o = p.add_argument_group("training")
    o.add_argument("--epochs", type=int, default=t.epochs)
    o.add_argument("--batch-size", type=int, default=t.batch_size)
    o.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=t.optimizer)
    o.add_argument("--lr", type=float, default=t.lr)
    o.add_argument("--momentum", type=float, default=t.momentum, help="SGD momentum")
    o.add_argument("--weight-decay", type=float, default=t.weight_decay)
    o.add_argument("--schedule", choices=["step", "cosine", "onecycle", "constant"], default=t.schedule)
    o.add_argument("--step-size", type=int, default=t.step_size, help="StepLR: epochs between decays")
    o.add_argument("--gamma", type=float, default=t.gamma, help="StepLR: decay factor")
    o.add_argument("--warmup-epochs", type=int, default=t.warmup_epochs, help="cosine: linear warm-up epochs")
    o.add_argument("--label-smoothing", type=float, default=t.label_smoothing)
    o.add_argument("--augment", choices=["none", "flip", "affine"], default=t.augment)
    o.add_argument("--tta", action=argparse.BooleanOptionalAction, default=t.tta,
                   help="average with the left-right mirror at evaluation (default on)")
    o.add_argument("--amp", action=argparse.BooleanOptionalAction, default=t.amp, help="mixed precision on CUDA")
    o.add_argument("--compile", action=argparse.BooleanOptionalAction, default=t.compile,
                   help="torch.compile the model for training on CUDA (faster epochs after a compile of about a "
                        "minute; ignored on CPU)")
    v = p.add_argument_group("validation and run")
    v.add_argument("--folds", type=int, default=c.folds)
    v.add_argument("--repeats", type=int, default=c.repeats)
    v.add_argument("--seed", type=int, default=c.seed)
    v.add_argument("--device", default=c.device, help="auto (default), cpu or cuda")
    v.add_argument("--workers", type=int, default=c.workers, help="decoding processes (0: every core)")
    v.add_argument("--out", type=Path, default=c.out, help="run folder (default runs/cv); same --out resumes")
    v.add_argument("--test-curves", action=argparse.BooleanOptionalAction, default=c.test_curves,
                   help="evaluate the test fold after every epoch for curves.png (default on; --no-test-curves "
                        "saves that time, about 10%%)")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.add_argument("--params", type=Path,
                   help="JSON of settings (e.g. best_params.json of smallct.tune) or a recipe name (lite0_finetune): "
                        "flag names with _ for -; flags given on the command line still win")
    return p


RECIPES = Path(__file__).resolve().parent / "recipes"  # named settings files: --params lite0_finetune


def resolve_params_path(params: Path) -> Path:
    """``--params``: a JSON file, or the name of a recipe shipped in ``smallct/recipes``."""
    if Path(params).is_file() or Path(params).suffix:
        return Path(params)
    recipe = RECIPES / f"{params}.json"
    if recipe.is_file():
        return recipe
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
    raise ValueError(f"{params}: no such settings file, nor a recipe (recipes: {known})")


def apply_params_file(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; settings in ``--params FILE`` replace the defaults, explicit flags win over both.

    Keys are flag names (``lr``, ``weight_decay``, ``schedule``, ...); keys starting with ``_`` are
    metadata (``_note`` is recorded in results.json as where the settings came from).
    """
    args = parser.parse_args(argv)
    if args.params is None:
        return args
    args.params = resolve_params_path(args.params)
    try:
        values = json.loads(Path(args.params).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{args.params}: cannot read settings JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{args.params}: expected a JSON object of settings")
    dests = {a.dest for a in parser._actions}
    settings = {k: v for k, v in values.items() if not k.startswith("_")}
    unknown = [k for k in settings if k not in dests or k in ("params", "out", "data")]
    if unknown:
        raise ValueError(f"{args.params}: unknown settings {', '.join(unknown)}")
    parser.set_defaults(**settings)
    args = parser.parse_args(argv)
    args.params_source = f"{args.params}: {values.get('_note', 'settings read from this file')}"
    return args


def config_from_args(args: argparse.Namespace) -> CVConfig:
    data = data_config_from_args(args)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                        step_size=args.step_size, gamma=args.gamma, warmup_epochs=args.warmup_epochs,
                        freeze_epochs=args.freeze_epochs, backbone_lr_mult=args.backbone_lr_mult,
                        label_smoothing=args.label_smoothing, augment=args.augment, tta=args.tta, amp=args.amp,
                        compile=args.compile)
    return CVConfig(arch=args.arch, weights=args.weights, task=args.task, folds=args.folds,
                    repeats=args.repeats, seed=args.seed, device=args.device, out=args.out, workers=args.workers,
                    params_source=getattr(args, "params_source", None), test_curves=args.test_curves, data=data,
                    train=train)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = apply_params_file(parser, argv)
        run_cv(config_from_args(args), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished folds are kept in {args.out}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"smallct.cv: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
