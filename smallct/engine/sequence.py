"""A sequence model over each series, out of fold: :func:`run_sequence` (``python -m smallct.sequence RUN``).

The 1st place of RSNA 2019 ran a 2-layer bidirectional GRU over each series' slices, fed with what its CNNs said of
each slice out of fold. Here, for a finished multi-label RSNA run (``smallct.cv`` on a folder prepared by
``smallct.prepare rsna``), every repeat and fold (r, k) of the run gets a :class:`smallct.models.sequence.SeriesGRU`
trained on the chains (series, or pieces between gaps) outside fold ``k`` and evaluated on those of fold ``k``:
the same folds, so its out-of-fold predictions pair with the run's. Its per-slice inputs (logits, embeddings or
both) come from the run's fold models as :mod:`smallct.engine.stacking` says: ``stacking`` (default) or
``--strict``. Training: Adam, a fixed number of epochs, the loss weighted as the metric (``any`` x2), each chain
reversed at random and some slices dropped at random; test: each chain forward and reversed, averaged. Nothing is
chosen on a test fold.

The sequence folder (default ``RUN/sequence``; names from :class:`smallct.engine.run_folder.RunFolder`) holds
``sequence.json`` (settings), ``folds/`` and ``checkpoints/`` (one GRU per fold; resume skips finished folds),
``features/`` (computed features kept), ``oof.csv``, ``results.json`` (figures with intervals over patients, the
base run's, and a paired comparison) and two figures. :func:`apply_sequence` applies it to new series.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from sklearn.metrics import roc_curve

from smallct.config.studies import SequenceConfig
from smallct.data.folds import Folds
from smallct.data.neighbours import Neighbours
from smallct.data.seeds import sequence_seed
from smallct.datasets.folder import Dataset
from smallct.datasets.rsna import label_weights
from smallct.engine.results import fold_figures, fold_metrics, oof_table, stack_probs
from smallct.engine.run_folder import RunFolder, fold_name
from smallct.engine.run_models import Run, load_run
from smallct.engine.stacking import SliceFeatures, check_strict, feature_matrix
from smallct.engine.train import loss_function, resolve_device
from smallct.evaluation.intervals import over_repeats, paired_figures
from smallct.evaluation.multilabel import multilabel_metrics
from smallct.evaluation.plots import new_figure, save_figure
from smallct.io.files import atomic_csv, atomic_json
from smallct.models.sequence import SeriesGRU, chain_probs
from smallct.progress import tqdm

HONESTY = {
    "stacking": ("STACKING: each slice's features come from the fold model that never trained on it, but the fold "
                 "models that described the training series of outer fold k trained on fold k, so the sequence "
                 "model learnt from features made by models that saw its test series; the figures may be a little "
                 "optimistic (--strict is the honest version)"),
    "strict": ("STRICT: the test series of outer fold k are described by the fold model that never trained on them, "
               "and its training series by inner models trained without fold k (for each other fold j, the run's "
               "settings on the folds not in {k, j}, predicting fold j): nothing the sequence model of fold k saw "
               "came from a model that trained on fold k"),
    "in_fold": ("LEAKY (in-fold): every slice described by a fold model that trained on it; for tests that show "
                "why the out-of-fold discipline matters, never for a figure"),
}
COMPARED = ("weighted_log_loss", "mean_auc")


def sequence_record(cfg: SequenceConfig, run: Run) -> dict:
    """``sequence.json``: what makes two sequence runs the same (resume refuses another)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("run", "out", "device", "n_boot", "mode", "strict")}
    folds = hashlib.sha1(json.dumps(run.record["folds"], sort_keys=True).encode()).hexdigest()[:16]
    return {"base_run": str(Path(cfg.run).resolve()), "base_folds_sha1": folds, **settings, "features_from": cfg.how,
            "model": "SeriesGRU: 2-layer bidirectional GRU, residual on the logits"}


def check_run(run: Run, dataset: Dataset | None = None) -> None:
    """``ValueError`` in one line when ``run`` is not a finished multi-label RSNA run on slices in series order."""
    if run.task != "multilabel" or label_weights(run.class_names) is None:
        raise ValueError(f"{run.path}: a {run.task} run of {', '.join(run.class_names)}; smallct.sequence models the "
                         "series of a multi-label RSNA run (smallct.cv on a folder made by smallct.prepare rsna)")
    if dataset is not None and dataset.neighbours is None:
        raise ValueError(f"{run.path}: its images ({dataset.source}) have no series order (prev/next links); "
                         "smallct.sequence needs a folder prepared from DICOM by smallct.prepare rsna")
    split = Folds(np.asarray(run.record["folds"]["assignment"], dtype=np.int64))
    repeats, folds = split.repeats, split.folds
    if run.folder.count_done() < repeats * folds:
        raise ValueError(f"{run.path}: {run.folder.count_done()} of {repeats * folds} folds finished; finish the run "
                         "first (run the same smallct.cv command again)")


def chains_of(neighbours: Neighbours, rows: np.ndarray) -> list[np.ndarray]:
    """The chains among ``rows`` only (a fold's series), as rows of the whole set, each in series order."""
    return [rows[c] for c in neighbours.take(rows).chains()]


def augment_chain(chain: np.ndarray, drop: float, generator: torch.Generator) -> np.ndarray:
    """``chain`` with each slice dropped with probability ``drop`` (one at least kept), reversed with probability
    1/2: a training example."""
    keep = (torch.rand(len(chain), generator=generator) >= drop).numpy()
    if not keep.any():
        keep[int(torch.randint(len(chain), (1,), generator=generator))] = True
    rows = chain[keep]
    return rows[::-1].copy() if torch.rand(1, generator=generator).item() < 0.5 else rows


def fit_sequence(x: np.ndarray, y: np.ndarray, chains: list[np.ndarray], cfg: SequenceConfig, seed: int,
                 class_names) -> tuple[SeriesGRU, list[dict]]:
    """A :class:`SeriesGRU` trained on ``chains`` (rows of features ``x`` (N, F) and labels ``y`` (N, 6)) for
    ``cfg.epochs`` epochs; returns it and one record per epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    model = SeriesGRU(X.shape[1], Y.shape[1], cfg.hidden, residual=cfg.features != "embeddings")
    model.set_scale(X[np.concatenate(chains)])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = loss_function("multilabel", 0.0, label_weights(class_names))  # the metric's weights, scaled to mean 1
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(chains), generator=generator).tolist()
        total, seen = 0.0, 0
        for start in range(0, len(order), cfg.batch_chains):
            rows = [augment_chain(chains[i], cfg.drop, generator) for i in order[start:start + cfg.batch_chains]]
            target = Y[np.concatenate(rows)]
            loss = loss_fn(model([X[r] for r in rows]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(target), seen + len(target)
        if not np.isfinite(total):
            raise FloatingPointError(f"sequence model: loss {total / seen} at epoch {epoch + 1}: lower --lr")
        history.append({"epoch": epoch + 1, "train_loss": total / seen})
    return model, history


def predict_chains(model: SeriesGRU, x: np.ndarray, chains: list[np.ndarray]) -> np.ndarray:
    """(N, 6) probabilities of the rows of ``chains`` (forward and reversed averaged); other rows NaN."""
    X = torch.as_tensor(x, dtype=torch.float32)
    out = np.full((len(x), model.n_labels), np.nan)
    for chain, p in zip(chains, chain_probs(model, [X[c] for c in chains])):
        out[chain] = p.numpy()
    return out


def sequence_fold(cfg: SequenceConfig, features: SliceFeatures, folder: RunFolder, r: int, k: int) -> dict:
    """Train the GRU of fold (r, k) outside it, predict fold k; write its checkpoint, then its fold file."""
    start, dataset = time.perf_counter(), features.dataset
    train, test = features.folds.train_test(r, k)
    x = features.of_fold(r, k, cfg.how)
    model, history = fit_sequence(x, dataset.labels, chains_of(dataset.neighbours, train), cfg,
                                  sequence_seed(cfg.seed, r, k), dataset.class_names)
    probs = predict_chains(model, x, chains_of(dataset.neighbours, test))[test]
    folder.save_checkpoint(r, k, model, {"n_features": model.n_features, "hidden": cfg.hidden, "features":
                                         cfg.features, "residual": model.residual, "repeat": r, "fold": k})
    content = {"repeat": r, "fold": k, "test_index": test.tolist(), "ids": [dataset.ids[i] for i in test],
               "probs": probs.tolist(), "history": history, "seconds": time.perf_counter() - start,
               "metrics": fold_metrics(dataset, dataset.labels[test], probs)}
    folder.write_fold(r, k, content)
    return content


def start_folder(folder: RunFolder, record: dict) -> None:
    """Create the sequence folder or resume it; ``ValueError`` when it holds another run with finished folds."""
    if folder.path.resolve() == Path(record["base_run"]):
        raise ValueError(f"--out {folder.path}: is the base run's folder; write the sequence model elsewhere")
    if folder.has_record():
        raise ValueError(f"--out {folder.path}: holds a smallct.cv run; write the sequence model elsewhere")
    if folder.sequence_json.is_file():
        old = json.loads(folder.sequence_json.read_text())
        if old != record and folder.count_done():
            changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ValueError(f"--out {folder.path}: holds a sequence model with other settings ({', '.join(changed)});"
                             " use another --out, or delete the folder to start again")
        if old != record:
            for stale in folder.checkpoints():
                stale.path.unlink()
    folder.folds_dir.mkdir(parents=True, exist_ok=True)
    folder.checkpoints_dir.mkdir(exist_ok=True)
    atomic_json(folder.sequence_json, record)


def run_sequence(cfg: SequenceConfig, progress: bool = True, log=print) -> dict:
    """Train and evaluate the sequence model of every fold of ``cfg.run`` and write the sequence folder.

    Returns ``results.json``'s content. ``ValueError`` (one line) when the run is not a finished multi-label RSNA
    run of slices in series order, or the folder holds another sequence model.
    """
    if cfg.run is None:
        raise ValueError("no run: give the folder of a finished smallct.cv run (multi-label RSNA)")
    run = load_run(cfg.run)
    check_run(run)
    dataset = run.dataset(log=log)
    check_run(run, dataset)
    folder = RunFolder(Path(cfg.out) if cfg.out is not None else run.path / "sequence")
    record = sequence_record(cfg, run)
    if cfg.how == "strict":
        check_strict(run)
    device = resolve_device(cfg.device)  # --device cuda without one: refused before anything is written
    start_folder(folder, record)
    features = SliceFeatures(run, dataset, cfg.features, folder, device, progress, log)
    folds = features.folds
    todo = [(r, k) for r in range(folds.repeats) for k in range(folds.folds) if not folder.is_done(r, k)]
    log(f"smallct.sequence: {run.path} ({run.arch}, {len(dataset)} slices in {len(dataset.neighbours.chains())} "
        f"chains), features {cfg.features} ({cfg.how}), {folds.folds} folds x {folds.repeats} repeats, "
        f"{cfg.epochs} epochs" + (f"; resuming: {folds.folds * folds.repeats - len(todo)} folds done" if
                                  len(todo) < folds.folds * folds.repeats else ""))
    started = time.perf_counter()
    for r, k in tqdm(todo, desc="sequence", unit="fold", disable=not progress, leave=False):
        fold = sequence_fold(cfg, features, folder, r, k)
        log(f"{fold_name(r, k)}: weighted log loss {fold['metrics']['weighted_log_loss']:.4f}, mean AUC "
            f"{fold['metrics']['mean_auc']:.3f} ({fold['seconds']:.1f} s)")
    return finish_sequence(folder, run, dataset, cfg, time.perf_counter() - started, log)


def finish_sequence(folder: RunFolder, run: Run, dataset: Dataset, cfg: SequenceConfig, seconds: float = 0.0,
                    log=print) -> dict:
    """``oof.csv``, ``results.json`` and the figures of a sequence folder whose folds are all done."""
    folds, base_folds = folder.read_folds(), run.folder.read_folds()
    repeats, n, y = Folds(np.asarray(run.record["folds"]["assignment"])).repeats, len(dataset), dataset.labels
    units = run.folder.resampling_units(run.record)
    oof = oof_table(folds, dataset)
    atomic_csv(folder.oof_csv, oof)
    figures = fold_figures(folds, "multilabel", y, repeats, units, cfg.seed, n_boot=cfg.n_boot)
    base = fold_figures(base_folds, "multilabel", y, repeats, units, cfg.seed, n_boot=cfg.n_boot)
    P, P_base = stack_probs(folds, n, repeats), stack_probs(base_folds, n, repeats)
    names = [*COMPARED, *(f"auc_{c}" for c in dataset.class_names)]
    paired = paired_figures(over_repeats(multilabel_metrics, y, P_base, names),
                            over_repeats(multilabel_metrics, y, P, names), units, names, cfg.n_boot, cfg.seed)
    results = {
        "task": "multilabel", "class_names": dataset.class_names, "n_images": n, "folds": Folds(
            np.asarray(run.record["folds"]["assignment"])).folds, "repeats": repeats, "complete": True,
        "sequence": {**sequence_record(cfg, run), "how": HONESTY[cfg.how]},
        "features_from": cfg.how,
        "selection": ("a fixed number of epochs and fixed settings; nothing (epoch, threshold, setting) is chosen on "
                      "a test fold"),
        **figures,
        "base_run": {"path": str(run.path), "arch": run.arch, "context": run.input.get("context"),
                     "pooled_oof": base["pooled_oof"], "pooled_oof_ci95": base["pooled_oof_ci95"]},
        "comparison": {"difference": "sequence - base run (B - A)", "figures": paired,
                       "method": f"paired {units.describe(cfg.n_boot)}, the same units for both; with repeats each "
                                 "figure is the mean over repeats",
                       "sentence": comparison_sentence(paired)},
        "seconds_this_session": seconds,
    }
    folder.write_results(results)
    save_figure(per_label_figure(paired, dataset.class_names), folder.per_label_png)
    save_figure(roc_figure(y, P_base[0], P[0], dataset.class_names.index("any") if "any" in dataset.class_names
                           else 0, dataset.class_names), folder.roc_png)
    log(f"sequence ({cfg.how}, {cfg.features}) against the base run, pooled out of fold:")
    log(comparison_sentence(paired))
    log(f"sequence folder: {folder.path}")
    return results


def comparison_sentence(paired: dict) -> str:
    """One line per compared figure: both values and the paired interval of the difference."""
    parts = []
    for m in COMPARED:
        f = paired[m]
        lo, hi = f["ci95"]
        verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
        parts.append(f"{m.replace('_', ' ')} {f['b']:.4f} vs {f['a']:.4f} (base), difference {f['difference']:+.4f} "
                     f"(95% paired CI {lo:+.4f} to {hi:+.4f}: {verdict})")
    return "; ".join(parts)


def per_label_figure(paired: dict, class_names) -> "object":
    """Per-label AUC of the base run and of the sequence model, side by side."""
    fig = new_figure((6.4, 3.4))
    ax = fig.subplots()
    at = np.arange(len(class_names))
    for shift, key, name in ((-0.2, "a", "base run"), (0.2, "b", "sequence model")):
        ax.bar(at + shift, [paired[f"auc_{c}"][key] for c in class_names], 0.4, label=name)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(at, class_names, rotation=20, fontsize=8)
    ax.set(ylim=(0, 1), ylabel="pooled out-of-fold AUC")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def roc_figure(y: np.ndarray, base: np.ndarray, seq: np.ndarray, j: int, class_names) -> "object":
    """ROC of label ``j`` (``any``), pooled out of fold (repeat 0): base run and sequence model."""
    fig = new_figure((4.6, 4.6))
    ax = fig.subplots()
    if len(np.unique(y[:, j])) == 2:
        for p, name in ((base, "base run"), (seq, "sequence model")):
            fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
            ax.plot(fpr, tpr, lw=2, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", xlabel="1 - specificity",
           ylabel="sensitivity", title=f"ROC of {class_names[j]}, pooled out of fold")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def apply_sequence(folder: str | Path, probs: Mapping[str, np.ndarray], neighbours: Neighbours,
                   embeddings: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(N, 6) probabilities of new slices by a sequence folder: for every fold (r, k), its GRU over the features
    the base run's fold model (r, k) gives (the pairing its test fold was evaluated with), the mean over the folds
    whose fold model is in ``probs``.

    ``probs``: ``{fold name ("r0_f2"): (N, 6) probabilities}`` of the base run's fold models (TTA as the run);
    ``embeddings``: the same of their pooled embeddings (:func:`smallct.engine.stacking.model_outputs`), needed
    when the folder's ``features`` are not ``logits``; ``neighbours``: the new slices' series links.
    """
    folder = RunFolder(Path(folder))
    checkpoints = folder.checkpoints()
    if not checkpoints:
        raise ValueError(f"{folder.path}: no sequence models (checkpoints/); run smallct.sequence first")
    chosen = [c for c in checkpoints if c.name in probs]  # predict --fold: those folds' pairs only
    if not chosen:
        raise ValueError(f"{folder.path}: none of its sequence models ({', '.join(c.name for c in checkpoints)}) "
                         f"pairs with the fold models given ({', '.join(probs)})")
    chains, out = neighbours.chains(), []
    for ckpt in chosen:
        saved = torch.load(ckpt.path, map_location="cpu", weights_only=True)
        emb = None if saved["features"] == "logits" or embeddings is None else embeddings.get(ckpt.name)
        x = feature_matrix(probs[ckpt.name], emb, saved["features"])
        model = SeriesGRU(int(saved["n_features"]), 6, int(saved["hidden"]), residual=bool(saved["residual"]))
        model.load_state_dict(saved["model"])
        out.append(predict_chains(model, x, chains))
    return np.mean(out, axis=0)


__all__ = ["SequenceConfig", "apply_sequence", "check_run", "fit_sequence", "run_sequence"]
