"""Learning curves: ``python -m smallct.curve``.

Would more labels help? For each training-set size ``n``, each repeat and each fold of a stratified
k-fold cross-validation, ``n`` images are drawn (stratified) from the fold's training part, a model
is trained on them and evaluated on the whole test fold. The same draws serve every weight source
and method (paired comparison). Per (weights, method, n) the run reports mean accuracy, balanced
accuracy and ROC AUC over folds x repeats, with the standard deviation and a 95% confidence interval
of the mean (Student t over folds x repeats; test folds of one repeat share no image but their
training parts overlap, so the interval is approximate).

Methods:

``probe``     a linear probe (:func:`smallct.fewshot.linear_probe`, fixed ``C``) on frozen embeddings
              (:mod:`smallct.embeddings`, computed once, cached): seconds.
``finetune``  the whole network trained on the ``n`` images (:func:`smallct.train.fit`): one network per
              (n, fold, repeat, weights); on a 2-core CPU about 10-30 s per fit of Lite0 at 160 px, so
              ``--method finetune`` with 5 sizes x 5 folds x 2 weight sources takes 10-30 minutes.

Writes ``curve.csv`` (one row per weights, method and n), ``curve_folds.csv`` (one row per fit),
``curve.json`` and ``curve.png`` (accuracy with its 95% interval against n, log scale).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from smallct.config import DataConfig, TrainConfig, to_dict
from smallct.cv import add_data_arguments, comma_list, data_config_from_args, fmt_duration, load_data
from smallct.embeddings import POOLINGS, load_embeddings
from smallct.fewshot import (FINETUNE_DEFAULTS, METRICS, NORMALIZATIONS, FewShotConfig,
                             add_finetune_arguments, finetune_config_from_args, finetune_fit_seconds,
                             finetune_predict, finetune_seconds_per_image, format_summary, interval_plot,
                             linear_probe, normalize_embeddings, summarize_episodes)
from smallct.labels import Dataset
from smallct.metrics import classification_metrics

CURVE_METHODS = ("probe", "finetune")


@dataclass
class CurveConfig:
    """A learning curve: sizes, weight sources, methods, and the cross-validation around them."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "tf_efficientnet_lite0"
    weights: list[str] = field(default_factory=lambda: ["imagenet", "none"])
    sizes: list[int] = field(default_factory=lambda: [10, 20, 40, 80, 160])
    methods: list[str] = field(default_factory=lambda: ["probe"])
    folds: int = 5
    repeats: int = 1
    pool: str = FewShotConfig.pool
    flip: bool = FewShotConfig.flip
    normalize: str = FewShotConfig.normalize
    C: float = FewShotConfig.C
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**to_dict(FINETUNE_DEFAULTS)))
    finetune_img_size: int | None = 160  # None: the embedding size
    seed: int = 0
    device: str = "auto"
    out: Path = Path("runs/curve")


def draw_training_subset(train: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn from ``train``, stratified by ``labels`` (all of ``train`` when ``n`` covers it), sorted."""
    if n >= len(train):
        return np.sort(train)
    if len(train) - n < len(np.unique(labels[train])):  # too few left out to stratify them: drop them at random
        drop = np.random.default_rng(seed).choice(len(train), len(train) - n, replace=False)
        return np.sort(np.delete(train, drop))
    sub, _ = train_test_split(train, train_size=n, stratify=labels[train], random_state=seed)
    return np.sort(sub)


def check_sizes(sizes: list[int], labels: np.ndarray, folds: np.ndarray) -> str | None:
    """``ValueError`` when a size is below twice the class count or above the largest training part; a note
    (else ``None``) when a size exceeds some folds' training parts (those folds train on all of theirs)."""
    n_classes = len(np.unique(labels))
    parts = [int((f != k).sum()) for f in folds for k in np.unique(f)]
    smallest, largest = min(parts), max(parts)
    bad = [n for n in sizes if n < 2 * n_classes or n > largest]
    if bad or not sizes:
        raise ValueError(f"--sizes {','.join(map(str, bad)) or '(empty)'}: need {2 * n_classes} <= n <= {largest} "
                         f"(two images per class at least; the largest training part holds {largest} images)")
    over = [n for n in sizes if n > smallest]
    if over:
        return (f"note: training parts hold {smallest}-{largest} images (grouped folds are uneven); at n = "
                f"{','.join(map(str, over))} a fold whose part is smaller trains on all of it "
                "(n_train in curve_folds.csv)")
    return None


@dataclass
class CurveResult:
    out: Path
    summary: pd.DataFrame
    folds: pd.DataFrame


def run_curve(cfg: CurveConfig, dataset: Dataset | None = None, progress: bool = True, log=print) -> CurveResult:
    """Train and evaluate every (weights, method, n, repeat, fold) of ``cfg``; write the outputs to ``cfg.out``."""
    from smallct.cache import load_images
    from smallct.config import CVConfig
    from smallct.duplicates import near_duplicate_groups
    from smallct.splits import fold_assignment
    from smallct.train import resolve_device
    from smallct.weights import resolve_weights

    bad = [m for m in cfg.methods if m not in CURVE_METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"--method {','.join(bad) or '(empty)'}: expected some of {', '.join(CURVE_METHODS)}")
    if cfg.pool not in POOLINGS or cfg.normalize not in NORMALIZATIONS:
        raise ValueError(f"--pool {cfg.pool} / --normalize {cfg.normalize}: expected one of {POOLINGS} / "
                         f"{NORMALIZATIONS}")
    sources = {w: resolve_weights(cfg.arch, w) for w in cfg.weights}  # before any work: no weights, no run
    if dataset is None:
        dataset = load_data(CVConfig(data=cfg.data, seed=cfg.seed), log)
    labels = np.asarray(dataset.labels)
    if labels.ndim != 1:
        raise ValueError("learning curves need one class per image (binary or multi-class), not multi-label")
    n_classes = len(dataset.class_names)
    groups, _ = near_duplicate_groups(dataset, cfg.data.group_similar, cfg.data.resize, cfg.data.crop,
                                      progress=progress, log=log)  # smallct.cv's folds
    folds = fold_assignment(labels, cfg.folds, cfg.repeats, cfg.seed, groups)
    note = check_sizes(cfg.sizes, labels, folds)
    if note:
        log(note)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"smallct.curve: {cfg.arch}, weights {','.join(cfg.weights)}, methods {','.join(cfg.methods)}, sizes "
        f"{','.join(map(str, cfg.sizes))}, {cfg.folds} folds x {cfg.repeats} repeats, {len(dataset)} images")

    splits = []  # (n, repeat, fold, subset, test): the same draws for every weights and method
    for n in cfg.sizes:
        for r in range(cfg.repeats):
            for k in range(cfg.folds):
                train, test = np.flatnonzero(folds[r] != k), np.flatnonzero(folds[r] == k)
                sub = draw_training_subset(train, labels, n, seed=cfg.seed * 10007 + n * 101 + r * 10 + k)
                splits.append((n, r, k, sub, test))

    rows = []
    for w, source in sources.items():
        if "probe" in cfg.methods:
            img_size = cfg.data.img_size or source.input_size
            z = load_embeddings(dataset.files, cfg.arch, w, img_size, cfg.data.resize, cfg.data.crop,
                                pool=cfg.pool, flip=cfg.flip, seed=cfg.seed, device=device, progress=progress,
                                log=log)
            z = normalize_embeddings(z, cfg.normalize)
            for n, r, k, sub, test in splits:
                P = linear_probe(z[sub], labels[sub], z[test], n_classes, C=cfg.C)
                rows.append(_fit_row(w, "probe", n, r, k, labels[test], P, len(sub)))
        if "finetune" in cfg.methods:
            ft_size = cfg.finetune_img_size or cfg.data.img_size or source.input_size
            images = load_images(dataset.files, ft_size, cfg.data.resize, cfg.data.crop, progress=progress)
            per_image = finetune_seconds_per_image(cfg.arch, source, images, labels, n_classes, cfg.finetune,
                                                   device)
            seconds = sum(finetune_fit_seconds(per_image, cfg.finetune, len(sub), len(test))
                          for _, _, _, sub, test in splits)
            log(f"fine-tuning ({w}): {len(splits)} fits at {ft_size} px, {cfg.finetune.epochs} epochs each; "
                f"estimated duration: about {fmt_duration(seconds)} on {device.type}")
            start = time.perf_counter()
            for n, r, k, sub, test in tqdm(splits, desc=f"fine-tuning ({w})", disable=not progress, leave=False):
                P = finetune_predict(cfg.arch, source, images, labels, sub, test, n_classes, cfg.finetune,
                                     seed=cfg.seed * 10007 + n * 101 + r * 10 + k, device=device)
                rows.append(_fit_row(w, "finetune", n, r, k, labels[test], P, len(sub)))
            log(f"fine-tuning ({w}) took {fmt_duration(time.perf_counter() - start)}")

    per_fit = pd.DataFrame(rows)
    summary = summarize_episodes(per_fit, ["weights", "method", "n"])
    short = {w: w if w in ("imagenet", "none") else Path(w).name for w in cfg.weights}  # a PATH by its file name
    summary.insert(2, "series", summary["method"] + " / " + summary["weights"].map(short))
    per_fit.to_csv(out / "curve_folds.csv", index=False)
    summary.to_csv(out / "curve.csv", index=False)
    record = {
        "config": to_dict(cfg),
        "weights": {w: s.to_dict() for w, s in sources.items()},
        "data": {"source": dataset.source, "n_images": len(dataset), "class_names": dataset.class_names,
                 "synthetic": cfg.data.data is None},
        "summary": summary.to_dict(orient="records"),
        "notes": {
            "n": "training images drawn (stratified) from each fold's training part; all of it when n covers it",
            "std": "standard deviation over folds x repeats (ddof=1)",
            "ci95": "95% confidence interval of the mean over folds x repeats (Student t); approximate, since "
                    "training parts overlap",
            "selection": "nothing is chosen on a test fold: C, pooling, epochs and learning rate are fixed (the "
                         "pooling and normalisation defaults come from smallct.fewshot, chosen on Head CT episodes "
                         "of seed 1)",
            "normalize": "a per-feature standardize over all images is undone by the probe's own scaler, fitted "
                         "on the training images only; l2 and none use no other image; center-l2 subtracts the "
                         "mean of all images (no labels)",
        },
    }
    (out / "curve.json").write_text(json.dumps(record, indent=1, default=float))
    interval_plot(summary, "n", "series", out / "curve.png", "training images per fold (n, log scale)",
                  f"learning curve: {cfg.arch}, {cfg.folds}-fold CV x {cfg.repeats}", logx=True)
    log(format_summary(summary, ("series", "n")))
    log(f"outputs: {out}")
    return CurveResult(out, summary, per_fit)


def _fit_row(weights: str, method: str, n: int, repeat: int, fold: int, y: np.ndarray, P: np.ndarray,
             n_train: int) -> dict:
    m = classification_metrics(y, P)
    return {"weights": weights, "method": method, "n": n, "n_train": n_train, "repeat": repeat, "fold": fold,
            "n_test": len(y),
            **{k: m[k] for k in METRICS}}


def build_parser() -> argparse.ArgumentParser:
    c = CurveConfig()
    p = argparse.ArgumentParser(
        prog="python -m smallct.curve",
        description="Learning curves: cross-validated accuracy when training on n images per fold, for each n, "
                    "pretrained against random initialisation, linear probe against fine-tuning. Without --data it "
                    "runs on a generated synthetic head-CT phantom set.")
    add_data_arguments(p, "embedding input size in px (default: the weights' own size)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=c.arch, help=f"backbone (default {c.arch}); any torchvision or timm name")
    m.add_argument("--weights", type=comma_list(), default=c.weights,
                   help="comma-separated weight sources to compare: imagenet, none, PATH (default imagenet,none)")
    m.add_argument("--method", "--methods", dest="methods", type=comma_list(), default=c.methods,
                   help="probe (default: linear probe on frozen embeddings, seconds) and/or finetune (trains one "
                        "network per n, fold, repeat and weights: about 10-30 s per fit of Lite0 at 160 px on a "
                        "2-core CPU, 10-30 min for the default sizes x 5 folds x 2 weights)")
    m.add_argument("--pool", choices=POOLINGS, default=c.pool,
                   help=f"embedding pooling (default {c.pool}, as smallct.fewshot): avg, max, avgmax, multiscale")
    m.add_argument("--flip", action=argparse.BooleanOptionalAction, default=c.flip,
                   help="average each embedding with its left-right mirror's")
    m.add_argument("--normalize", choices=NORMALIZATIONS, default=c.normalize,
                   help=f"embedding transform before the probe (default {c.normalize})")
    m.add_argument("--C", type=float, default=c.C, help="linear probe: inverse L2 penalty (fixed)")
    v = p.add_argument_group("sizes and validation")
    v.add_argument("--sizes", type=comma_list(int), default=c.sizes,
                   help="training images per fold, e.g. 10,20,40,80,160")
    v.add_argument("--folds", type=int, default=c.folds)
    v.add_argument("--repeats", type=int, default=c.repeats, help="repeated CV (other fold draws)")
    v.add_argument("--seed", type=int, default=c.seed)
    add_finetune_arguments(p, "fine-tuning", c.finetune_img_size)
    r = p.add_argument_group("run")
    r.add_argument("--device", default=c.device, help="auto (default), cpu or cuda")
    r.add_argument("--out", type=Path, default=c.out, help="output folder (default runs/curve)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> CurveConfig:
    return CurveConfig(data=data_config_from_args(args), arch=args.arch, weights=args.weights, sizes=args.sizes,
                       methods=args.methods, folds=args.folds, repeats=args.repeats, pool=args.pool, flip=args.flip,
                       normalize=args.normalize, C=args.C, finetune=finetune_config_from_args(args),
                       finetune_img_size=args.finetune_img_size or None, seed=args.seed, device=args.device,
                       out=args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_curve(config_from_args(args), progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"smallct.curve: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
