"""Few-shot baselines: :func:`run_fewshot` (``python -m smallct.fewshot``).

An *episode* draws ``k`` labelled images per class (the support set), no two from one group, and tests on
every image that shares no group with a support image (the query set). The groups are smallct.cv's
(:func:`smallct.data.similar.near_duplicate_groups`: near-duplicates and patients): a query image in a
support image's group would be tested on (almost) the image it was given, so such images sit out the episode
(``episode_ids.csv`` lists each episode's support, query and excluded ids). Episodes repeat with other draws
under one seed; every method sees the same episodes, so methods are compared on paired draws. Per ``k`` and
method the run reports the mean accuracy, balanced accuracy and ROC AUC over episodes, each with the
standard deviation over episodes (how much one study of ``k`` labels per class can vary), a 95%
confidence interval of the mean (Student t; how precisely the mean over episodes is known on *this* pool of
images: more episodes narrow it, it does not cover the variation from one data set of the same kind to
another), and a 95% interval for a new pool (a bootstrap over the groups of the query images and over the
episodes, :func:`summarize_fewshot`; more episodes do not narrow it). Episodes query (almost) every image, so
there are no disjoint pools to compare directly.

Methods: the embedding methods of :mod:`smallct.studies.methods` (``proto``, ``linear``, ``knn``,
``labelprop``), and ``finetune``: the whole network trained on the support set
(:mod:`smallct.studies.finetune`); each episode trains a network, so it has its own, smaller episode count.

Embeddings come from :func:`smallct.models.embeddings.load_embeddings` (computed once, cached). Before the
embedding methods they are transformed by ``--normalize`` (see
:func:`smallct.studies.methods.episode_embeddings`): ``standardize`` (the default) and ``center-l2`` take
their mean (and spread) from the support images for the inductive methods, and from the support and query
images (no labels) for the transductive ``labelprop``; ``l2`` and ``none`` use no other image. The defaults
(max pooling, ``standardize``, no flip averaging; Lite0 at 320 px on Head CT) were chosen on episodes of
another seed (1) than the reported one (0), on the same 200 images, when the standardisation still used all
200 images (on seed 1, ``l2`` now beats it for ``proto`` and ``knn``).

Writes ``fewshot.csv`` (one row per method and k, ``transductive`` marked), ``episodes.csv`` (one row per
episode and method), ``episode_ids.csv`` (one row per episode and image: ``support``, ``query`` or
``excluded``; the same for every method), ``fewshot.json`` (settings, grouping, summary, notes) and
``fewshot.png`` (mean accuracy with its 95% new-pool interval against k, one line per method).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from smallct.progress import tqdm

from smallct.config.run import to_dict
from smallct.config.studies import FewShotConfig
from smallct.data.cache import open_images
from smallct.data.seeds import episode_seed
from smallct.data.similar import Grouping, near_duplicate_groups
from smallct.datasets.classes import check_class_sizes
from smallct.datasets.folder import Dataset, load_data
from smallct.engine.estimate import fmt_duration
from smallct.engine.results import N_BOOT
from smallct.engine.train import resolve_device, with_threads
from smallct.evaluation.intervals import Units
from smallct.evaluation.plots import interval_plot, save_figure
from smallct.io.files import atomic_csv, atomic_json
from smallct.models.embeddings import POOLINGS, load_embeddings
from smallct.models.weights import WeightSource, resolve_weights
from smallct.studies.finetune import finetune_fit_seconds, finetune_predict, seconds_per_image
from smallct.studies.methods import EMBEDDING_METHODS, NORMALIZATIONS, TRANSDUCTIVE, episode_embeddings
from smallct.studies.summary import (SUMMARY_METRICS, episode_figures, format_summary, summarize_episodes,
                                     summarize_resampled)


def _group_index(groups, n: int) -> np.ndarray:
    """Group index (N,) 0..G-1 of group labels (ints or patient ids); None: every image its own group."""
    if groups is None:
        return np.arange(n)
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()


def sample_episode(labels: np.ndarray, shots: int, rng: np.random.Generator,
                   groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Support indices (``shots`` per class, class by class) and query indices (sorted).

    ``groups`` (N,): a group per image (near-duplicates, patients; None: every image on its own). No two
    support images share a group: each class's images are taken in a random order, skipping those whose
    group already holds a support image. The query set is every image outside the support images' groups;
    the others of those groups are left out of the episode. ``ValueError`` when a class runs out of groups
    for its support or keeps no query image.
    """
    labels = np.asarray(labels)
    group = _group_index(groups, len(labels))
    taken = np.zeros(group.max() + 1, dtype=bool)
    support = []
    for c in np.unique(labels):
        chosen = []
        for i in rng.permutation(np.flatnonzero(labels == c)):
            if not taken[group[i]]:
                taken[group[i]] = True
                chosen.append(i)
                if len(chosen) == shots:
                    break
        if len(chosen) < shots:
            raise ValueError(f"--shots {shots}: class {c} has only {len(chosen)} images in groups of their own "
                             f"left for the support set; use fewer shots")
        support += chosen
    query = np.flatnonzero(~taken[group])
    missing = sorted(set(np.unique(labels)) - set(labels[query]))
    if missing:
        raise ValueError(f"--shots {shots}: no query image of class {missing[0]} is left outside the support "
                         f"images' groups; use fewer shots")
    return np.array(support, dtype=np.int64), query


def episode_draws(labels: np.ndarray, shots: list[int], episodes: int, seed: int,
                  groups: np.ndarray | None = None) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(k, episode, support, query)`` for every k and episode: the draws every method is run on."""
    return [(k, e, *sample_episode(labels, k, episode_rng(seed, k, e), groups))
            for k in shots for e in range(episodes)]


def episode_table(draws: list, ids: list[str]) -> pd.DataFrame:
    """``episode_ids.csv``: per episode, one row per image with its ``role``: support, query or excluded
    (shares a group with a support image). Support rows come in the order drawn (class by class)."""
    ids = np.asarray(ids, dtype=object)
    frames = []
    for k, e, support, query in draws:
        excluded = np.setdiff1d(np.arange(len(ids)), np.r_[support, query])
        order = np.r_[support, query, excluded]
        role = ["support"] * len(support) + ["query"] * len(query) + ["excluded"] * len(excluded)
        frames.append(pd.DataFrame({"shots": k, "episode": e, "role": role, "id": ids[order]}))
    return pd.concat(frames, ignore_index=True)


def episode_rng(seed: int, shots: int, episode: int) -> np.random.Generator:
    """The generator of one episode: the same (seed, shots, episode) always draws the same support set."""
    return np.random.default_rng([seed, shots, episode])


def check_shots(labels: np.ndarray, shots: list[int], groups: np.ndarray | None = None) -> None:
    """``ValueError`` unless every class has more groups (images, without ``groups``) than the largest
    ``shots``: its support images come from distinct groups and some must stay for the query set."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("few-shot episodes need one class per image (binary or multi-class), not multi-label")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"only one class in the labels ({classes[0]}): nothing to classify")
    group = _group_index(groups, len(labels))
    smallest = min(len(np.unique(group[labels == c])) for c in classes)
    bad = [k for k in shots if k < 1 or k >= smallest]
    if bad:
        grouped = len(np.unique(group)) < len(labels)
        what = "groups (near-duplicates or patients kept together)" if grouped else "images"
        raise ValueError(f"--shots {','.join(map(str, bad))}: need 1 <= k < {smallest} (the smallest class "
                         f"has {smallest} {what}; the support takes at most one image per group and the query "
                         f"set must keep some)")


def check_methods(methods: list[str]) -> None:
    known = [*EMBEDDING_METHODS, "finetune"]
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"--method {','.join(bad) or '(empty)'}: expected some of {', '.join(known)}")


def check_config(cfg: FewShotConfig) -> None:
    """``ValueError`` naming what is wrong, before any work."""
    check_methods(cfg.methods)
    if cfg.pool not in POOLINGS:
        raise ValueError(f"--pool {cfg.pool}: expected one of {', '.join(POOLINGS)}")
    if cfg.normalize not in NORMALIZATIONS:
        raise ValueError(f"--normalize {cfg.normalize}: expected one of {', '.join(NORMALIZATIONS)}")
    if cfg.episodes < 1 or cfg.finetune_episodes < 1:
        raise ValueError("--episodes and --finetune-episodes must be at least 1")


@dataclass
class FewShotResult:
    out: Path
    summary: pd.DataFrame
    episodes: pd.DataFrame


def _row(method: str, shots: int, episode: int, y: np.ndarray, P: np.ndarray, n_excluded: int,
         query: np.ndarray) -> dict:
    """One episode's row of ``episodes.csv``, with its query images and predictions (``_index``, ``_P``: not
    written, resampled for the new-pool interval)."""
    return {"method": method, "shots": shots, "episode": episode, "n_query": len(y), "n_excluded": n_excluded,
            **episode_figures(y, P), "_index": query, "_P": P}


def embedding_episodes(cfg: FewShotConfig, dataset: Dataset, draws: list, img_size: int, device: torch.device,
                       progress: bool = True, log=print) -> list[dict]:
    """One row per episode and embedding method, on the first ``cfg.episodes`` of each k's ``draws``
    (:func:`episode_draws`): the embeddings computed once, every method on the same draws."""
    methods = [m for m in cfg.methods if m in EMBEDDING_METHODS]
    labels, n_classes = np.asarray(dataset.labels), len(dataset.class_names)
    z = load_embeddings(dataset.files, cfg.arch, cfg.weights, img_size, cfg.data.resize, cfg.data.crop,
                        pool=cfg.pool, flip=cfg.flip, seed=cfg.seed, device=device, progress=progress, log=log,
                        offline=cfg.offline)
    fitted = "" if cfg.normalize in ("none", "l2") else (" (fitted on each episode's support; on support and "
                                                         "query, no labels, for the transductive methods)")
    log(f"embeddings: {z.shape[1]} features per image at {img_size} px (cached), normalize {cfg.normalize}{fitted}")
    rows = []
    todo = [d for d in draws if d[1] < cfg.episodes]
    for k, e, support, query in tqdm(todo, desc="episodes", disable=not progress, leave=False):
        for m in methods:
            zs, zq = episode_embeddings(z, support, query, cfg.normalize, transductive=m in TRANSDUCTIVE)
            P = EMBEDDING_METHODS[m](zs, labels[support], zq, n_classes, C=cfg.C, knn_k=cfg.knn_k)
            rows.append(_row(m, k, e, labels[query], P, len(labels) - len(support) - len(query), query))
    return rows


def finetune_episodes(cfg: FewShotConfig, dataset: Dataset, draws: list, source: WeightSource, img_size: int,
                      device: torch.device, progress: bool = True, log=print) -> list[dict]:
    """One row per fine-tuning episode (the first ``cfg.finetune_episodes`` of each k's ``draws``): a network
    trained on each support set; the duration is said first."""
    labels, n_classes = np.asarray(dataset.labels), len(dataset.class_names)
    ft_size = cfg.finetune_img_size or img_size
    images = open_images(dataset.files, ft_size, cfg.data.resize, cfg.data.crop, progress=progress, log=log)
    per_image = seconds_per_image(cfg.arch, source, images, labels, n_classes, cfg.finetune, device)
    todo = [d for d in draws if d[1] < cfg.finetune_episodes]
    seconds = sum(finetune_fit_seconds(per_image, cfg.finetune, len(s), len(q)) for _, _, s, q in todo)
    log(f"fine-tuning: {cfg.finetune_episodes} episodes per k at {ft_size} px, {cfg.finetune.epochs} epochs "
        f"each; estimated duration: about {fmt_duration(seconds)} on {device.type}")
    rows = []
    start = time.perf_counter()
    for k, e, support, query in tqdm(todo, desc="fine-tuning episodes", disable=not progress, leave=False):
        P = finetune_predict(cfg.arch, source, images, labels, support, query, n_classes, cfg.finetune,
                             seed=episode_seed(cfg.seed, k, e), device=device)
        rows.append(_row("finetune", k, e, labels[query], P, len(labels) - len(support) - len(query), query))
    log(f"fine-tuning took {fmt_duration(time.perf_counter() - start)}")
    return rows


def episode_rows(rows: list[dict]) -> pd.DataFrame:
    """``episodes.csv``: the episodes' rows without their query images and predictions (``_index``, ``_P``)."""
    return pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])


def summarize_fewshot(rows: list[dict], labels: np.ndarray, units: Units, seed: int = 0,
                      n_boot: int = N_BOOT) -> pd.DataFrame:
    """``fewshot.csv``: per method and k, ``count`` (episodes), ``transductive``, each figure's mean, standard
    deviation and Student-t interval over episodes (``{metric}_ci_low``/``_high``: this pool, ``ci_describes``),
    and the interval for a new pool (``{metric}_new_pool_ci_low``/``_high``, ``new_pool_ci_method``): the groups
    and the episodes resampled, each episode's figure over its resampled query images
    (:func:`smallct.studies.summary.summarize_resampled`)."""
    by = ["method", "shots"]
    episodes = episode_rows(rows)
    summary = summarize_episodes(episodes, by)
    summary.insert(2, "transductive", summary["method"].isin(TRANSDUCTIVE))
    pools = summary[by].merge(summarize_resampled(rows, by, labels, units, per="row", n_boot=n_boot, seed=seed),
                              on=by, how="left")  # in the summary's order
    summary["ci_describes"] = (f"this pool: Student t over the episodes, all drawn from these {units.n_images} "
                               "images; more episodes narrow it")
    for m in SUMMARY_METRICS:
        summary[f"{m}_new_pool_ci_low"] = pools[f"{m}_low"].to_numpy()
        summary[f"{m}_new_pool_ci_high"] = pools[f"{m}_high"].to_numpy()
    summary["new_pool_ci_method"] = (f"{units.describe(n_boot)} of each episode's query images, episodes resampled "
                                     "too; more episodes on the same images do not narrow it")
    return summary


@with_threads()
def run_fewshot(cfg: FewShotConfig, dataset: Dataset | None = None, progress: bool = True,
                log=print, grouping: Grouping | None = None) -> FewShotResult:
    """Run the episodes of every method and ``k`` in ``cfg`` (at ``cfg.threads`` torch threads), write the outputs
    to ``cfg.out``. ``grouping``: the groups episodes respect (default: smallct.cv's, from
    :func:`smallct.data.similar.near_duplicate_groups` with ``cfg.data``'s group_similar)."""
    check_config(cfg)
    dataset = dataset if dataset is not None else load_data(cfg.data, cfg.seed, log)  # first: no data, no run
    check_class_sizes(dataset, 2, "an episode needs a support and a query image of every class: correct the labels "
                      "or leave that class's images out")  # a stray label, named (check_shots counts groups)
    source = resolve_weights(cfg.arch, cfg.weights, offline=cfg.offline)  # then: no weights, no run
    if grouping is None:
        grouping = near_duplicate_groups(dataset, cfg.data.group_similar, progress=progress, log=log)
    check_shots(dataset.labels, cfg.shots, grouping.groups)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    img_size = source.image_size(cfg.data.img_size)
    log(f"smallct.fewshot: {cfg.arch} ({source.description}), {len(dataset)} images, {len(dataset.class_names)} "
        f"classes, shots per class {','.join(map(str, cfg.shots))}, methods {','.join(cfg.methods)}")
    embedding = any(m in EMBEDDING_METHODS for m in cfg.methods)
    n_draws = max(cfg.episodes if embedding else 0, cfg.finetune_episodes if "finetune" in cfg.methods else 0)
    draws = episode_draws(dataset.labels, cfg.shots, n_draws, cfg.seed, grouping.groups)
    rows = []
    if embedding:
        rows += embedding_episodes(cfg, dataset, draws, img_size, device, progress, log)
    if "finetune" in cfg.methods:
        rows += finetune_episodes(cfg, dataset, draws, source, img_size, device, progress, log)
    episodes = episode_rows(rows)
    units = grouping.units(len(dataset))  # what the new-pool interval resamples: the groups episodes respect
    summary = summarize_fewshot(rows, dataset.labels, units, seed=cfg.seed)
    atomic_csv(out / "episodes.csv", episodes)
    atomic_csv(out / "episode_ids.csv", episode_table(draws, dataset.ids))
    atomic_csv(out / "fewshot.csv", summary)
    atomic_json(out / "fewshot.json", fewshot_record(cfg, dataset, source, img_size, summary, grouping, draws))
    save_figure(interval_plot(summary, "shots", "method", "labelled images per class (k)",
                              f"few-shot: {cfg.arch}, weights {cfg.weights}", interval="new_pool_ci",
                              band=f"95% CI for a new pool, {units.describe(N_BOOT)} of the query images, "
                                   "episodes resampled too"),
                out / "fewshot.png")
    log(format_summary(summary, intervals=(("ci", "95% CI, this pool"), ("new_pool_ci", "95% CI, new pool")),
                       notes=(f"this pool: Student t over the episodes, all drawn from these {len(dataset)} images: "
                              "how well the mean is known on them (more episodes narrow it)",
                              f"new pool: {summary['new_pool_ci_method'].iloc[0]} (fewshot.png's band)")))
    if summary["transductive"].any():
        log(f"transductive (also use the unlabelled query images, never their labels): "
            f"{', '.join(sorted(set(summary.loc[summary['transductive'], 'method'])))}")
    log(f"query images left out per episode (they share a group with a support image): "
        f"{', '.join(f'{k} shots {v:.1f}' for k, v in excluded_per_shots(draws, len(dataset)).items())}")
    log(f"outputs: {out}")
    return FewShotResult(out, summary, episodes)


def excluded_per_shots(draws: list, n_images: int) -> dict[int, float]:
    """Per k, the mean number of images per episode left out because they share a group with a support image."""
    left_out: dict[int, list[int]] = {}
    for k, _, support, query in draws:
        left_out.setdefault(k, []).append(n_images - len(support) - len(query))
    return {k: float(np.mean(v)) for k, v in left_out.items()}


def fewshot_record(cfg: FewShotConfig, dataset: Dataset, source: WeightSource, img_size: int,
                   summary: pd.DataFrame, grouping: Grouping, draws: list) -> dict:
    """``fewshot.json``: the settings, the weights, the data, the groups episodes respect, the summary, and notes
    on what the figures mean."""
    group = _group_index(grouping.groups, len(dataset))
    sizes = np.bincount(group)
    return {
        "config": to_dict(cfg),
        "weights": source.to_dict(),
        "img_size": img_size,
        "data": {"source": dataset.source, "n_images": len(dataset), "class_names": dataset.class_names,
                 "synthetic": cfg.data.data is None},
        # the same settings give the same figures on the same kind of device at the same torch thread count
        "device": resolve_device(cfg.device).type,
        "threads": torch.get_num_threads(),
        "grouping": {
            **grouping.record(dataset.ids),
            "n_groups": int(len(sizes)),
            "n_images_in_shared_groups": int((sizes[group] > 1).sum()),
            "excluded_per_episode_mean": {str(k): round(v, 3) for k, v in excluded_per_shots(draws,
                                                                                            len(dataset)).items()},
            "rule": "no two support images share a group; no query image shares a group with a support image "
                    "(those images are left out of the episode: role 'excluded' in episode_ids.csv)",
        },
        "summary": summary.to_dict(orient="records"),
        "intervals": {"ci95": summary["ci_describes"].iloc[0],
                      "new_pool_ci95": {**grouping.units(len(dataset)).record(),
                                        "method": summary["new_pool_ci_method"].iloc[0]}},
        "notes": {
            "episode": "support = k images per class drawn under the seed, from distinct groups (see grouping); "
                       "query = every image outside the support images' groups; episode_ids.csv lists them",
            "std": "standard deviation over episodes (ddof=1): the spread of one study's result",
            "new_pool_ci95": "{metric}_new_pool_ci_low/_high: 95% percentile bootstrap interval of the mean over "
                             "episodes, resampling the groups and the episodes (new_pool_ci_method): each resample "
                             "is a new pool of query images of the same kind, the same for every episode, so more "
                             "episodes do not narrow it; each episode keeps its support images, so the pool they "
                             "were drawn from is not resampled. Disjoint pools would give a direct between-pool "
                             "figure, but every episode queries (almost) all images; fewshot.png draws this band",
            "ci95": "{metric}_ci_low/_high: 95% confidence interval of the mean over episodes (Student t; "
                    "ci_describes); episodes share images, "
                    "so it describes this data set, not the population it was drawn from",
            "selection": "nothing is chosen on this run's query labels: methods and their settings (C, k, "
                         "normalisation, pooling, epochs) are fixed before the episodes run. The defaults (max "
                         "pooling, standardize; 320 px on Head CT) were chosen on episodes of seed 1 of the Head "
                         "CT set, when standardize still used all images' embeddings: on that set, other seeds' "
                         "figures are new draws of the same images, so slightly optimistic",
            "transductive": sorted(TRANSDUCTIVE & set(cfg.methods)),
            "normalize": f"{cfg.normalize}: " + (
                "no statistic of other images" if cfg.normalize in ("none", "l2") else
                "mean (and spread) fitted on each episode's support images for the inductive methods, on its "
                "support and query images (no labels) for the transductive ones"),
            "binary_threshold": "accuracy at p >= 0.5 (argmax)",
        },
    }
