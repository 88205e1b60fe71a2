"""Per-slice features for a second stage, out of fold: what a fold model of a run says of each slice.

A sequence model (:mod:`smallct.engine.sequence`) reads, for each slice, what the run's fold models make of it:
their six logits (the logit of the fold file's probability: no recomputation) and, as an option, their pooled
embeddings. Which fold model describes which slice decides whether the second stage's figures are honest:

* ``stacking``: every slice by the fold model that never trained on it (fold ``j``'s slices by model (r, j)), for
  training and test series alike. The test series of outer fold ``k`` are out of fold, but the models that
  described the training series (those of the other folds) trained on fold ``k``: the second stage learns from
  features made by models that saw its test series. The 1st place of RSNA 2019 did so.
* ``strict``: the training series of outer fold ``k`` are described by inner models trained without fold ``k``:
  for each other fold ``j``, a CNN with the run's settings trained on the folds not in {k, j} predicts fold ``j``.
  Those fits are kept as run folders (``inner/<outer fold>/cnn/`` of the sequence folder) and resume.
* ``in_fold``: every slice by a fold model that trained on it. Deliberately leaky: the tests show with it that
  the discipline matters (with permuted labels it finds signal that is not there).

:class:`SliceFeatures` holds one run's sources and a cache of what was computed (``features/``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from smallct.config.studies import SequenceFeatures
from smallct.data.folds import Folds
from smallct.data.source import BatchSource
from smallct.datasets.folder import Dataset
from smallct.engine.cv import FoldJob, train_fold
from smallct.engine.run_folder import RunFolder, fold_name
from smallct.engine.run_models import Run, load_fold_model
from smallct.engine.train import predict_proba
from smallct.io.files import atomic_write
from smallct.models.embeddings import compute_embeddings
from smallct.models.weights import resolve_weights

FEATURES = typing.get_args(SequenceFeatures)  # --features
MODES = ("stacking", "strict", "in_fold")
EMBEDDING_POOL = "avg"  # what the fold model's head sees
LOGIT_EPS = 1e-6  # probabilities clipped to [eps, 1 - eps] before the logit: at most +-13.8


def logit(p: np.ndarray) -> np.ndarray:
    """The logit of probabilities ``p`` clipped to [:data:`LOGIT_EPS`, 1 - :data:`LOGIT_EPS`] (float32)."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def feature_matrix(probs: np.ndarray, embeddings: np.ndarray | None, features: str) -> np.ndarray:
    """(n, F) per-slice features of one fold model: its logits (n, 6), its embeddings (n, D), or both (logits
    first: what :class:`smallct.models.sequence.SeriesGRU`'s residual adds to)."""
    if features not in FEATURES:
        raise ValueError(f"--features {features}: expected one of {', '.join(FEATURES)}")
    parts = [] if features == "embeddings" else [logit(probs)]
    if features != "logits":
        if embeddings is None:
            raise ValueError(f"--features {features}: no embeddings given")
        parts.append(np.asarray(embeddings, dtype=np.float32))
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def model_outputs(model: torch.nn.Module, x: BatchSource, mean, std, tta: bool, embeddings: bool,
                  device: torch.device | None = None, amp: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """A fold model's probabilities (n, 6) of images ``x`` and, with ``embeddings``, its pooled embeddings (n, D),
    each averaged with the left-right mirror when ``tta`` (as the run evaluated its test folds)."""
    probs = predict_proba(model, x, mean, std, "multilabel", tta, device=device, amp=amp)
    z = (compute_embeddings(model, x, mean, std, EMBEDDING_POOL, flip=tta, device=device, progress=False)
         if embeddings else None)
    return probs, z


@dataclass
class SliceFeatures:
    """The per-slice features of ``run``'s slices as each fold model (outer, or strict inner) gives them.

    ``images``: the run's model inputs (:meth:`smallct.engine.run_models.Run.images`), opened on first use (logits
    from fold files need none); ``out``: the sequence folder (its ``features/`` cache and strict inner runs).
    """

    run: Run
    dataset: Dataset
    features: str
    out: RunFolder
    device: torch.device = torch.device("cpu")
    progress: bool = True
    log: object = print
    _images: BatchSource | None = field(default=None, repr=False)

    @property
    def folds(self) -> Folds:
        return Folds(np.asarray(self.run.record["folds"]["assignment"], dtype=np.int64))

    @property
    def images(self) -> BatchSource:
        if self._images is None:
            self._images = self.run.images(self.dataset, progress=self.progress, log=self.log)[1]
        return self._images

    def of_fold(self, r: int, k: int, mode: str) -> np.ndarray:
        """(N, F) features of every slice for the sequence model of outer fold (r, k) under ``mode``."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        folds, out = self.folds, None
        for j in range(folds.folds):
            rows = folds.train_test(r, j)[1]
            if mode == "in_fold":  # a model that trained on fold j: leaky on purpose
                part = self._outer(r, (j + 1) % folds.folds, rows, fresh=True)
            elif mode == "strict" and j != k:
                part = self._inner(r, k, j, rows)
            else:
                part = self._outer(r, j, rows)
            out = np.empty((len(self.dataset), part.shape[1]), np.float32) if out is None else out
            out[rows] = part
        return out

    def _outer(self, r: int, k: int, rows: np.ndarray, fresh: bool = False) -> np.ndarray:
        """Fold model (r, k)'s features of ``rows``; its probabilities from its fold file unless ``fresh`` (rows it
        trained on: computed again)."""
        folder = self.run.folder
        return self._of(folder.checkpoint_file(r, k), None if fresh else folder.read_fold(r, k), rows,
                        f"{fold_name(r, k)}-{'fresh' if fresh else 'oof'}")

    def _inner(self, r: int, k: int, j: int, rows: np.ndarray) -> np.ndarray:
        """The strict inner model of outer fold (r, k) trained without folds k and j: its features of fold j."""
        inner = self.inner_folder(r, k)
        if not inner.is_done(r, j):
            self.fit_inner(r, k)
        return self._of(inner.checkpoint_file(r, j), inner.read_fold(r, j), rows,
                        f"{fold_name(r, k)}-inner-{fold_name(r, j)}")

    def _of(self, checkpoint: Path, fold: dict | None, rows: np.ndarray, name: str) -> np.ndarray:
        """(len(rows), F) features by the model in ``checkpoint``: logits from its fold file ``fold`` when that
        holds exactly ``rows``; what else is needed computed once and kept in ``features/NAME-FEATURES.npz`` (with the
        rows and the checkpoint's size and modification time: read back only for the same ones)."""
        probs = None
        if fold is not None and np.array_equal(np.asarray(fold["test_index"], dtype=np.int64), rows):
            probs = np.asarray(fold["probs"], dtype=np.float64)
        if probs is not None and self.features == "logits":
            return feature_matrix(probs, None, self.features)
        cache = self.out.features_dir / f"{name}-{self.features}.npz"
        stat = Path(checkpoint).stat()
        stamp = np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)  # the same model file, unchanged
        if cache.is_file():
            saved = np.load(cache)
            if np.array_equal(saved["rows"], rows) and np.array_equal(saved["model"], stamp):
                return saved["x"]
        model, info = load_fold_model(checkpoint, self.device)
        p, embeddings = model_outputs(model, self.images.take(rows), info["mean"], info["std"], self.run.tta,
                                      self.features != "logits", self.device, self.run.amp)
        x = feature_matrix(p if probs is None else probs, embeddings, self.features)
        with atomic_write(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, rows=rows, model=stamp, x=x)
        return x

    def inner_folder(self, r: int, k: int) -> RunFolder:
        return self.out.inner_run(r, k, "cnn")

    def fit_inner(self, r: int, k: int) -> None:
        """Train (or finish) the strict inner models of outer fold (r, k): for each other fold j, the run's settings
        on the folds not in {k, j}, predicting fold j (their fold files and checkpoints under :meth:`inner_folder`)."""
        folds, run = self.folds, self.run
        check_strict(run)
        folder = self.inner_folder(r, k)
        cfg = replace(run.config, out=folder.path, test_curves=False)
        record = {**run.record, "strict_inner": {"outer_repeat": r, "outer_fold": k}}
        folder.start(record, resuming=folder.check_resume(record))
        source = resolve_weights(cfg.arch, cfg.weights, offline=cfg.offline)
        source = replace(source, mean=tuple(run.input["mean"]), std=tuple(run.input["std"]))
        job = FoldJob(cfg=cfg, dataset=self.dataset, source=source, img_size=int(run.input["img_size"]),
                      images=self.images, device=self.device, folder=folder, progress=self.progress,
                      context=run.context)
        outer_train = folds.train_test(r, k)[0]
        for j in range(folds.folds):
            if j == k or folder.is_done(r, j):
                continue
            test = folds.train_test(r, j)[1]
            self.log(f"--strict: outer fold {fold_name(r, k)}: fitting the inner model without folds {k} and {j}")
            train_fold(job, r, j, np.setdiff1d(outer_train, test), test)


def check_strict(run: Run) -> None:
    """``ValueError`` when ``run`` has too few folds for ``--strict`` (inner models trained without two folds)."""
    folds = Folds(np.asarray(run.record["folds"]["assignment"], dtype=np.int64)).folds
    if folds < 3:
        raise ValueError(f"--strict: {run.path} has {folds} folds; inner models trained without two folds need at "
                         "least 3 (run smallct.cv with --folds 3 or more)")
