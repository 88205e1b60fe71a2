"""Few-shot baselines: ``python -m smallct.fewshot``.

An *episode* draws ``k`` labelled images per class (the support set) and tests on all the other
images (the query set). Episodes repeat with other draws under one seed; every method sees the same
episodes, so methods are compared on paired draws. Per ``k`` and method the run reports the mean
accuracy, balanced accuracy and ROC AUC over episodes, each with the standard deviation over
episodes (how much one study of ``k`` labels per class can vary) and a 95% confidence interval of
the mean (Student t; how precisely the mean over episodes is known on *this* data set: it does not
cover the variation from one data set of the same kind to another).

Methods (:data:`EMBEDDING_METHODS`, plus ``finetune``):

``proto``     nearest prototype: cosine similarity to the mean embedding of each class.
``linear``    a linear probe: logistic regression (fixed ``C``, standardised by the support set) on frozen
              embeddings.
``knn``       k nearest neighbours (cosine) among the support embeddings.
``labelprop`` label propagation over a nearest-neighbour graph of support *and query* embeddings:
              transductive (it uses the query images, never their labels), like a study that has all its
              images but labels only a few.
``finetune``  the whole network trained on the support set (:func:`smallct.train.fit`); each episode
              trains a network, so it has its own, smaller episode count.

Embeddings come from :func:`smallct.embeddings.load_embeddings` (computed once, cached). Before the
embedding methods they are transformed by ``--normalize`` (see :func:`normalize_embeddings`):
``standardize`` (the default) and ``center-l2`` use the mean (and spread) of *all* images' embeddings,
labelled or not: no label is used, but the query images are (a mild transductive step); ``l2`` and
``none`` use no other image. The defaults (max pooling, ``standardize``, no flip averaging; Lite0 at
320 px on Head CT) were chosen on episodes of another seed (1) than the reported one (0), on the same
200 images.

Writes ``fewshot.csv`` (one row per method and k), ``episodes.csv`` (one row per episode and
method), ``fewshot.json`` (settings, summary, notes) and ``fewshot.png`` (accuracy with its 95%
interval against k, one line per method).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from smallct.config import DataConfig, TrainConfig, to_dict
from smallct.cv import add_data_arguments, comma_list, data_config_from_args, fmt_duration, load_data
from smallct.embeddings import POOLINGS, load_embeddings
from smallct.labels import Dataset
from smallct.metrics import classification_metrics

METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
NORMALIZATIONS = ("none", "l2", "center-l2", "standardize")
TRANSDUCTIVE = {"labelprop"}  # methods that also use the (unlabelled) query embeddings

# Fine-tuning on a handful of images: few epochs, Adam-style steps (a batch is the whole support set).
FINETUNE_DEFAULTS = TrainConfig(epochs=10, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                schedule="cosine", warmup_epochs=1, augment="affine", tta=True)


@dataclass
class FewShotConfig:
    """A few-shot study: which embeddings, which methods, how many shots and episodes."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none | PATH
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    episodes: int = 100
    finetune_episodes: int = 20
    methods: list[str] = field(default_factory=lambda: ["proto", "linear", "knn", "labelprop"])
    pool: str = "max"  # embeddings.POOLINGS; max beat avg on Head CT selection episodes (seed 1)
    flip: bool = False  # average each embedding with its mirror's (no consistent gain on Head CT)
    normalize: str = "standardize"  # NORMALIZATIONS
    C: float = 0.1  # inverse L2 penalty of the linear probe (fixed, never chosen on query labels)
    knn_k: int = 5
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**to_dict(FINETUNE_DEFAULTS)))
    finetune_img_size: int | None = 160  # None: the embedding size
    seed: int = 0
    device: str = "auto"
    out: Path = Path("runs/fewshot")


# --- episodes -------------------------------------------------------------------------------------------

def sample_episode(labels: np.ndarray, shots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Support indices (``shots`` per class, class by class) and query indices (all the others, sorted)."""
    labels = np.asarray(labels)
    support = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                              for c in np.unique(labels)])
    query = np.setdiff1d(np.arange(len(labels)), support)
    return support, query


def episode_rng(seed: int, shots: int, episode: int) -> np.random.Generator:
    """The generator of one episode: the same (seed, shots, episode) always draws the same support set."""
    return np.random.default_rng([seed, shots, episode])


def check_shots(labels: np.ndarray, shots: list[int]) -> None:
    """``ValueError`` unless every class keeps at least one query image at the largest ``shots``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("few-shot episodes need one class per image (binary or multi-class), not multi-label")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"only one class in the labels ({classes[0]}): nothing to classify")
    bad = [k for k in shots if k < 1 or k >= counts.min()]
    if bad:
        raise ValueError(f"--shots {','.join(map(str, bad))}: need 1 <= k < {counts.min()} (the smallest class "
                         f"has {counts.min()} images and must keep some for the query set)")


# --- methods on embeddings ------------------------------------------------------------------------------

EMBEDDING_METHODS: dict[str, Callable[..., np.ndarray]] = {}


def register(name: str):
    def deco(fn):
        EMBEDDING_METHODS[name] = fn
        return fn
    return deco


def _l2(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)


def normalize_embeddings(z: np.ndarray, how: str) -> np.ndarray:
    """Embeddings (N, D) transformed for the embedding methods.

    ``none``; ``l2``: each row to unit length; ``center-l2``: subtract the mean of all rows (every image of
    the set, no label used), then unit length; ``standardize``: each feature to mean 0 and standard deviation
    1 over all rows (no label used).
    """
    if how == "none":
        return z
    if how == "standardize":
        return (z - z.mean(0)) / (z.std(0) + 1e-6)
    if how == "l2":
        return _l2(z)
    if how == "center-l2":
        return _l2(z - z.mean(0))
    raise ValueError(f"normalize {how!r}: expected one of {', '.join(NORMALIZATIONS)}")


@register("proto")
def nearest_prototype(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray, n_classes: int,
                      temperature: float = 10.0, **_) -> np.ndarray:
    """Class probabilities (Nq, C): softmax of ``temperature`` x cosine similarity to each class mean."""
    protos = np.stack([zs[ys == c].mean(0) for c in range(n_classes)])
    logits = temperature * (_l2(zq) @ _l2(protos).T)
    return torch.softmax(torch.from_numpy(logits), 1).numpy()


@register("linear")
def linear_probe(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray, n_classes: int, C: float = 0.1,
                 **_) -> np.ndarray:
    """Class probabilities (Nq, C) of a logistic regression on support embeddings standardised by the support set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    model.fit(zs, ys)
    P = np.zeros((len(zq), n_classes))
    P[:, model.classes_] = model.predict_proba(zq)
    return P


@register("knn")
def nearest_neighbours(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray, n_classes: int, knn_k: int = 5,
                       **_) -> np.ndarray:
    """Class probabilities (Nq, C): the share of each class among the ``k`` most cosine-similar support images.

    ``k`` is at most the number of support images per class (1 with one shot per class), so that one
    class cannot outvote the other by numbers alone.
    """
    k = max(1, min(knn_k, int(np.bincount(ys, minlength=n_classes).min())))
    sim = _l2(zq) @ _l2(zs).T
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    P = np.stack([(ys[nearest] == c).mean(1) for c in range(n_classes)], 1)
    # break ties (even k) by the mean similarity of each class's neighbours
    tie_break = np.stack([np.where(ys[nearest] == c, np.take_along_axis(sim, nearest, 1), 0).sum(1)
                          for c in range(n_classes)], 1)
    return P + 1e-6 * tie_break / k


@register("labelprop")
def label_propagation(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray, n_classes: int, neighbours: int = 10,
                      alpha: float = 0.9, **_) -> np.ndarray:
    """Class probabilities (Nq, C) by label propagation over a k-nearest-neighbour graph of support and query.

    Transductive: the unlabelled query embeddings shape the graph (Zhou et al. 2004, "Learning with local
    and global consistency"; as in transductive few-shot learning). Edges join each image to its
    ``neighbours`` most cosine-similar images, weighted by similarity cubed; ``F = (I - alpha S)^-1 Y`` with the
    symmetrically normalised graph ``S``; each class column is divided by its sum so that no class wins by
    the size of its support set.
    """
    z = _l2(np.concatenate([zs, zq]))
    n = len(z)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    k = min(neighbours, n - 1)
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    W = np.zeros((n, n))
    W[rows, nearest.ravel()] = np.maximum(sim[rows, nearest.ravel()], 0) ** 3
    W = W + W.T
    d = 1 / np.sqrt(np.where(W.sum(1) > 0, W.sum(1), 1))
    Y = np.zeros((n, n_classes))
    Y[np.arange(len(ys)), ys] = 1
    F = np.linalg.solve(np.eye(n) - alpha * d[:, None] * W * d[None], Y)
    F = F[len(ys):] / F.sum(0, keepdims=True).clip(1e-12)
    F = F.clip(0)
    return np.where(F.sum(1, keepdims=True) > 0, F / F.sum(1, keepdims=True).clip(1e-12), 1 / n_classes)


# --- fine-tuning ----------------------------------------------------------------------------------------

def finetune_predict(arch: str, source, images: torch.Tensor, labels: np.ndarray, support: np.ndarray,
                     query: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int,
                     device: torch.device) -> np.ndarray:
    """Class probabilities (Nq, C) of ``arch`` initialised from ``source`` and trained on the support images."""
    from smallct.models import create_model
    from smallct.train import fit, predict_proba

    torch.manual_seed(seed)
    model = create_model(arch, n_classes, source)
    fit(model, images[support], torch.as_tensor(labels[support]), cfg, source.mean, source.std, "binary"
        if n_classes == 2 else "multiclass", seed=seed, device=device, progress=False)
    return predict_proba(model, images[query], source.mean, source.std, "multiclass", cfg.tta, device=device,
                         amp=cfg.amp)


def finetune_seconds_per_image(arch: str, source, images: torch.Tensor, labels: np.ndarray, n_classes: int,
                               cfg: TrainConfig, device: torch.device) -> float:
    """Seconds per training image of one fine-tuning step, timed over a few steps (weights restored)."""
    from smallct.models import create_model
    from smallct.train import time_training_step

    model = create_model(arch, n_classes, source)
    batch = min(cfg.batch_size, len(images))
    return time_training_step(model, images[:batch], torch.as_tensor(labels[:batch]), cfg, source.mean,
                              source.std, "multiclass", device)


def finetune_fit_seconds(per_image: float, cfg: TrainConfig, n_train: int, n_eval: int) -> float:
    """Expected seconds of one fine-tuning fit on ``n_train`` images and its prediction of ``n_eval`` images."""
    # a forward pass costs about a third of a training step; TTA doubles it
    return per_image * (cfg.epochs * n_train + n_eval * (1 + cfg.tta) / 3)


# --- summaries ------------------------------------------------------------------------------------------

def summarize_episodes(episodes: pd.DataFrame, by: list[str], metrics=METRICS, level: float = 0.95) -> pd.DataFrame:
    """Per group: ``count`` (episodes or fits), and per metric the mean, the standard deviation over episodes (ddof=1)
    and the ``level`` confidence interval of the mean (Student t)."""
    rows = []
    for key, g in episodes.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["count"] = len(g)
        for m in metrics:
            v = g[m].dropna().to_numpy(dtype=float)
            mean = float(v.mean()) if len(v) else float("nan")
            sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            half = (float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * sd / np.sqrt(len(v))) if len(v) > 1
                    else float("nan"))
            row.update({f"{m}_mean": mean, f"{m}_std": sd, f"{m}_ci_low": mean - half, f"{m}_ci_high": mean + half})
        rows.append(row)
    return pd.DataFrame(rows)


def interval_plot(summary: pd.DataFrame, x: str, line: str, path: Path, xlabel: str, title: str,
                  metric: str = "accuracy", logx: bool = False) -> Path:
    """Mean ``metric`` with its 95% interval (band) against ``x``, one line per value of ``line``."""

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, g in summary.groupby(line, sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[f"{metric}_mean"], marker="o", label=str(name))
        ax.fill_between(g[x], g[f"{metric}_ci_low"], g[f"{metric}_ci_high"], alpha=0.15)
    if logx:
        ax.set_xscale("log")
    xs = sorted(summary[x].unique())
    ax.set_xticks(xs, [str(v) for v in xs])
    ax.minorticks_off() if logx else None
    ax.set(xlabel=xlabel, ylabel=f"{metric.replace('_', ' ')} (mean, 95% CI of the mean)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --- the study ------------------------------------------------------------------------------------------

@dataclass
class FewShotResult:
    out: Path
    summary: pd.DataFrame
    episodes: pd.DataFrame


def check_methods(methods: list[str]) -> None:
    known = [*EMBEDDING_METHODS, "finetune"]
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"--method {','.join(bad) or '(empty)'}: expected some of {', '.join(known)}")


def run_fewshot(cfg: FewShotConfig, dataset: Dataset | None = None, progress: bool = True,
                log=print) -> FewShotResult:
    """Run the episodes of every method and ``k`` in ``cfg``, write the outputs to ``cfg.out``."""
    from smallct.config import CVConfig
    from smallct.train import resolve_device
    from smallct.weights import resolve_weights

    check_methods(cfg.methods)
    if cfg.pool not in POOLINGS:
        raise ValueError(f"--pool {cfg.pool}: expected one of {', '.join(POOLINGS)}")
    if cfg.normalize not in NORMALIZATIONS:
        raise ValueError(f"--normalize {cfg.normalize}: expected one of {', '.join(NORMALIZATIONS)}")
    if cfg.episodes < 1 or cfg.finetune_episodes < 1:
        raise ValueError("--episodes and --finetune-episodes must be at least 1")
    source = resolve_weights(cfg.arch, cfg.weights)  # before any work: no weights, no run
    if dataset is None:
        dataset = load_data(CVConfig(data=cfg.data, seed=cfg.seed), log)
    labels = np.asarray(dataset.labels)
    check_shots(labels, cfg.shots)
    n_classes = len(dataset.class_names)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    img_size = cfg.data.img_size or source.input_size
    log(f"smallct.fewshot: {cfg.arch} ({source.description}), {len(dataset)} images, {n_classes} classes, "
        f"shots per class {','.join(map(str, cfg.shots))}, methods {','.join(cfg.methods)}")

    rows = []
    embedding_methods = [m for m in cfg.methods if m in EMBEDDING_METHODS]
    if embedding_methods:
        z = load_embeddings(dataset.files, cfg.arch, cfg.weights, img_size, cfg.data.resize, cfg.data.crop,
                            pool=cfg.pool, flip=cfg.flip, seed=cfg.seed, device=device, progress=progress, log=log)
        z = normalize_embeddings(z, cfg.normalize)
        log(f"embeddings: {z.shape[1]} features per image at {img_size} px (cached), normalize {cfg.normalize}")
        todo = [(k, e) for k in cfg.shots for e in range(cfg.episodes)]
        for k, e in tqdm(todo, desc="episodes", disable=not progress, leave=False):
            support, query = sample_episode(labels, k, episode_rng(cfg.seed, k, e))
            for m in embedding_methods:
                P = EMBEDDING_METHODS[m](z[support], labels[support], z[query], n_classes, C=cfg.C,
                                         knn_k=cfg.knn_k)
                rows.append(_episode_row(m, k, e, labels[query], P))

    if "finetune" in cfg.methods:
        from smallct.cache import load_images

        ft_size = cfg.finetune_img_size or img_size
        images = load_images(dataset.files, ft_size, cfg.data.resize, cfg.data.crop, progress=progress)
        per_image = finetune_seconds_per_image(cfg.arch, source, images, labels, n_classes, cfg.finetune, device)
        seconds = cfg.finetune_episodes * sum(finetune_fit_seconds(per_image, cfg.finetune, k * n_classes,
                                                                   len(labels) - k * n_classes) for k in cfg.shots)
        log(f"fine-tuning: {cfg.finetune_episodes} episodes per k at {ft_size} px, {cfg.finetune.epochs} epochs "
            f"each; estimated duration: about {fmt_duration(seconds)} on {device.type}")
        todo = [(k, e) for k in cfg.shots for e in range(cfg.finetune_episodes)]
        start = time.perf_counter()
        for k, e in tqdm(todo, desc="fine-tuning episodes", disable=not progress, leave=False):
            support, query = sample_episode(labels, k, episode_rng(cfg.seed, k, e))
            P = finetune_predict(cfg.arch, source, images, labels, support, query, n_classes, cfg.finetune,
                                 seed=cfg.seed * 100003 + k * 1009 + e, device=device)
            rows.append(_episode_row("finetune", k, e, labels[query], P))
        log(f"fine-tuning took {fmt_duration(time.perf_counter() - start)}")

    episodes = pd.DataFrame(rows)
    summary = summarize_episodes(episodes, ["method", "shots"])
    episodes.to_csv(out / "episodes.csv", index=False)
    summary.to_csv(out / "fewshot.csv", index=False)
    record = {
        "config": to_dict(cfg),
        "weights": source.to_dict(),
        "img_size": img_size,
        "data": {"source": dataset.source, "n_images": len(dataset), "class_names": dataset.class_names,
                 "synthetic": cfg.data.data is None},
        "summary": summary.to_dict(orient="records"),
        "notes": {
            "episode": "support = k images per class drawn under the seed; query = every other image",
            "std": "standard deviation over episodes (ddof=1): the spread of one study's result",
            "ci95": "95% confidence interval of the mean over episodes (Student t); episodes share images, "
                    "so it describes this data set, not the population it was drawn from",
            "selection": "nothing is chosen on this run's query labels: methods and their settings (C, k, "
                         "normalisation, pooling, epochs) are fixed before the episodes run. The defaults (max "
                         "pooling, standardize; 320 px on Head CT) were chosen on episodes of seed 1 of the Head "
                         "CT set: on that set, other seeds' figures are new draws of the same images, so slightly "
                         "optimistic",
            "transductive": sorted(TRANSDUCTIVE & set(cfg.methods)) + (
                [f"normalize {cfg.normalize} (all images' embeddings, no labels)"]
                if cfg.normalize in ("standardize", "center-l2") else []),
            "binary_threshold": "accuracy at p >= 0.5 (argmax)",
        },
    }
    (out / "fewshot.json").write_text(json.dumps(record, indent=1, default=float))
    interval_plot(summary, "shots", "method", out / "fewshot.png", "labelled images per class (k)",
                  f"few-shot: {cfg.arch}, weights {cfg.weights}")
    log(format_summary(summary))
    log(f"outputs: {out}")
    return FewShotResult(out, summary, episodes)


def _episode_row(method: str, shots: int, episode: int, y: np.ndarray, P: np.ndarray) -> dict:
    m = classification_metrics(y, P)
    return {"method": method, "shots": shots, "episode": episode, "n_query": len(y),
            **{k: m[k] for k in METRICS}}


def format_summary(summary: pd.DataFrame, keys: tuple[str, ...] = ("method", "shots")) -> str:
    """A text table: per group (``keys``), mean +- std [95% CI of the mean] of each metric."""
    width = [max(len(k), *(len(str(v)) for v in summary[k])) for k in keys]
    head = " ".join(f"{k:>{w}}" for k, w in zip(keys, width)) + f" {'count':>5}  "
    lines = [head + "  ".join(f"{m:>32}" for m in METRICS),
             " " * len(head) + "  ".join(f"{'mean +- std [95% CI of mean]':>32}" for _ in METRICS)]
    for _, r in summary.iterrows():
        cells = [f"{r[f'{m}_mean']:.3f} +- {r[f'{m}_std']:.3f} [{r[f'{m}_ci_low']:.3f}, {r[f'{m}_ci_high']:.3f}]"
                 for m in METRICS]
        lines.append(" ".join(f"{str(r[k]):>{w}}" for k, w in zip(keys, width)) + f" {r['count']:>5}  "
                     + "  ".join(f"{c:>32}" for c in cells))
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------------

def add_finetune_arguments(p: argparse.ArgumentParser, title: str, finetune_img_size: int | None) -> None:
    """The fine-tuning flags of smallct.fewshot and smallct.curve (defaults: :data:`FINETUNE_DEFAULTS`)."""
    t = FINETUNE_DEFAULTS
    f = p.add_argument_group(title)
    f.add_argument("--finetune-img-size", type=int, default=finetune_img_size,
                   help=f"input size for fine-tuning (default {finetune_img_size}; 0: the embedding size)")
    f.add_argument("--epochs", type=int, default=t.epochs, help="fine-tuning epochs")
    f.add_argument("--lr", type=float, default=t.lr, help="fine-tuning learning rate")
    f.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=t.optimizer)
    f.add_argument("--schedule", choices=["step", "cosine", "onecycle", "constant"], default=t.schedule)
    f.add_argument("--weight-decay", type=float, default=t.weight_decay)
    f.add_argument("--augment", choices=["none", "flip", "affine"], default=t.augment)
    return f


def finetune_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """:data:`FINETUNE_DEFAULTS` with the flags of :func:`add_finetune_arguments`."""
    return TrainConfig(**{**to_dict(FINETUNE_DEFAULTS), "epochs": args.epochs, "lr": args.lr,
                          "optimizer": args.optimizer, "schedule": args.schedule,
                          "weight_decay": args.weight_decay, "augment": args.augment})


def build_parser() -> argparse.ArgumentParser:
    c = FewShotConfig()
    p = argparse.ArgumentParser(
        prog="python -m smallct.fewshot",
        description="Few-shot baselines: k labelled images per class, tested on all the others, repeated over "
                    "episodes. Without --data it runs on a generated synthetic head-CT phantom set.")
    add_data_arguments(p, "embedding input size in px (default: the weights' own size; on Head CT, Lite0 at 320 px "
                          "beat 224 px)", folds=False)
    m = p.add_argument_group("model and embeddings")
    m.add_argument("--arch", default=c.arch, help=f"backbone (default {c.arch}); any torchvision or timm name")
    m.add_argument("--weights", default=c.weights, help="imagenet (default), none (random init), or a PATH")
    m.add_argument("--pool", choices=POOLINGS, default=c.pool,
                   help=f"embedding pooling (default {c.pool}): avg = the model's penultimate features; max = the "
                        "max-pooled last feature map; avgmax = both; multiscale = both, at every stage (timm)")
    m.add_argument("--flip", action=argparse.BooleanOptionalAction, default=c.flip,
                   help="average each embedding with its left-right mirror's")
    m.add_argument("--normalize", choices=NORMALIZATIONS, default=c.normalize,
                   help=f"embedding transform before the methods (default {c.normalize}); standardize and center-l2 "
                        "use the mean (and spread) of all images' embeddings, no labels (transductive); l2 uses "
                        "none")
    e = p.add_argument_group("episodes and methods")
    e.add_argument("--shots", type=comma_list(int), default=c.shots, help="labelled images per class, e.g. 1,5,10,20")
    e.add_argument("--episodes", type=int, default=c.episodes, help="episodes per k for proto, linear, knn")
    e.add_argument("--method", "--methods", dest="methods", type=comma_list(), default=c.methods,
                   help="comma-separated: proto, linear, knn, labelprop (transductive: uses the unlabelled query "
                        "images), finetune (default proto,linear,knn,labelprop)")
    e.add_argument("--C", type=float, default=c.C, help="linear probe: inverse L2 penalty (fixed)")
    e.add_argument("--knn-k", type=int, default=c.knn_k, help="knn: neighbours (at most the shots per class)")
    e.add_argument("--seed", type=int, default=c.seed, help="draws of the episodes (and random init)")
    f = add_finetune_arguments(p, "fine-tuning (costly: every episode trains a network)", c.finetune_img_size)
    f.add_argument("--finetune-episodes", type=int, default=c.finetune_episodes, help="episodes per k for finetune")
    r = p.add_argument_group("run")
    r.add_argument("--device", default=c.device, help="auto (default), cpu or cuda")
    r.add_argument("--out", type=Path, default=c.out, help="output folder (default runs/fewshot)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> FewShotConfig:
    return FewShotConfig(data=data_config_from_args(args), arch=args.arch, weights=args.weights, shots=args.shots,
                         episodes=args.episodes, finetune_episodes=args.finetune_episodes, methods=args.methods,
                         pool=args.pool, flip=args.flip, normalize=args.normalize, C=args.C, knn_k=args.knn_k,
                         finetune=finetune_config_from_args(args),
                         finetune_img_size=args.finetune_img_size or None, seed=args.seed, device=args.device,
                         out=args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_fewshot(config_from_args(args), progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"smallct.fewshot: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
