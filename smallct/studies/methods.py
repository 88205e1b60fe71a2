"""Few-shot methods on frozen embeddings: a registry of ``method(zs, ys, zq, n_classes) -> P``.

Each method takes support embeddings ``zs`` (Ns, D) with labels ``ys`` and query embeddings ``zq`` (Nq, D)
and returns class probabilities (Nq, C). :func:`episode_embeddings` transforms the embeddings first, with
statistics of the images the method may see: the support alone, or (:data:`TRANSDUCTIVE`) support and query.

``proto``     nearest prototype: cosine similarity to the mean embedding of each class.
``linear``    a linear probe: logistic regression (fixed ``C``, standardised by the support set).
``knn``       k nearest neighbours (cosine) among the support embeddings.
``labelprop`` label propagation over a nearest-neighbour graph of support *and query* embeddings:
              transductive (it uses the query images, never their labels).
"""

from __future__ import annotations

import typing
from typing import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from smallct.config.studies import Normalization

NORMALIZATIONS = typing.get_args(Normalization)
TRANSDUCTIVE = {"labelprop"}  # methods that also use the (unlabelled) query embeddings

EMBEDDING_METHODS: dict[str, Callable[..., np.ndarray]] = {}


def register(name: str):
    def deco(fn):
        EMBEDDING_METHODS[name] = fn
        return fn
    return deco


def _l2(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)


def normalize_embeddings(z: np.ndarray, how: str, reference: np.ndarray | None = None) -> np.ndarray:
    """Embeddings (N, D) transformed for the embedding methods.

    ``none``; ``l2``: each row to unit length; ``center-l2``: subtract the mean of the ``reference`` rows
    (default: the rows of ``z``; no label used), then unit length; ``standardize``: each feature to mean 0 and
    standard deviation 1 over the ``reference`` rows.
    """
    ref = z if reference is None else reference
    if how == "none":
        return z
    if how == "standardize":
        return (z - ref.mean(0)) / (ref.std(0) + 1e-6)
    if how == "l2":
        return _l2(z)
    if how == "center-l2":
        return _l2(z - ref.mean(0))
    raise ValueError(f"normalize {how!r}: expected one of {', '.join(NORMALIZATIONS)}")


def episode_embeddings(z: np.ndarray, support: np.ndarray, query: np.ndarray, how: str,
                       transductive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Support (Ns, D) and query (Nq, D) embeddings of one episode, normalised (:func:`normalize_embeddings`)
    with the mean and spread of the images the method may see: the support images for an inductive method,
    so that a query image's prediction depends on no other query image; support and query images (no
    labels) for a transductive one."""
    seen = z[np.r_[support, query]] if transductive else z[support]
    return normalize_embeddings(z[support], how, seen), normalize_embeddings(z[query], how, seen)


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
