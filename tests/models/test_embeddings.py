"""Embeddings: frozen features computed once per (data, arch, weights, size, pooling) and cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smallct.data.cache import load_images
from smallct.io.files import cache_dir
from smallct.models.embeddings import compute_embeddings, load_embeddings
from smallct.models.factory import create_model
from smallct.models.weights import resolve_weights


def test_embeddings_are_computed_once_and_cached(phantom_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLCT_CACHE", str(tmp_path))
    files = sorted(phantom_dir.glob("*.png"))[:12]
    z = load_embeddings(files, "resnet18", "none", img_size=32, progress=False)
    assert z.shape == (12, 512) and z.dtype == np.float32 and np.isfinite(z).all()
    assert cache_dir() == tmp_path
    cached = list(cache_dir().glob("embeddings-*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.full_like(z, 7.0))  # a second call must read the cache, not recompute
    assert (load_embeddings(files, "resnet18", "none", img_size=32, progress=False) == 7.0).all()
    # another size, pooling, flip or seed is another cache entry, computed afresh
    z64 = load_embeddings(files, "resnet18", "none", img_size=64, progress=False)
    assert z64.shape == (12, 512) and not (z64 == 7.0).all()
    other_seed = load_embeddings(files, "resnet18", "none", img_size=32, seed=1, progress=False)
    assert not np.allclose(other_seed, 7.0)
    both = load_embeddings(files, "resnet18", "none", img_size=32, pool="avgmax", progress=False)
    assert both.shape == (12, 1024)
    assert len(list(cache_dir().glob("embeddings-*.npy"))) == 4


def test_rows_follow_the_files_and_match_the_model(phantom_dir):
    files = sorted(phantom_dir.glob("*.png"))[:6]
    z = load_embeddings(files, "resnet18", "none", img_size=32, cache=False, progress=False)
    z_rev = load_embeddings(files[::-1], "resnet18", "none", img_size=32, cache=False, progress=False)
    np.testing.assert_allclose(z_rev, z[::-1], rtol=1e-4, atol=1e-5)
    # the same as the penultimate features of the model built from the same seed
    source = resolve_weights("resnet18", "none")
    torch.manual_seed(0)
    model = create_model("resnet18", 2, source).eval()
    x = load_images(files, 32, progress=False)
    with torch.no_grad():
        from smallct.data.transforms import normalize
        from smallct.models.factory import embed

        expected = embed(model, normalize(x, source.mean, source.std)).numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)


def test_flip_averaging_is_mirror_invariant():
    torch.manual_seed(0)
    source = resolve_weights("resnet18", "none")
    model = create_model("resnet18", 2, source)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = compute_embeddings(model, x, source.mean, source.std, progress=False)
    mirrored = compute_embeddings(model, x.flip(-1), source.mean, source.std, progress=False)
    assert not np.allclose(plain, mirrored, atol=1e-4)
    a = compute_embeddings(model, x, source.mean, source.std, flip=True, progress=False)
    b = compute_embeddings(model, x.flip(-1), source.mean, source.std, flip=True, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a, (plain + mirrored) / 2, rtol=1e-4, atol=1e-5)


def test_avgmax_and_multiscale_pooling_shapes():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    source = resolve_weights("resnet18", "none")
    model = create_model("resnet18", 2, source)
    z = compute_embeddings(model, x, source.mean, source.std, pool="avgmax", progress=False)
    np.testing.assert_allclose(z[:, :512], compute_embeddings(model, x, source.mean, source.std, progress=False),
                               rtol=1e-4, atol=1e-5)
    assert (z[:, 512:] >= z[:, :512] - 1e-6).all()  # max pooling >= average pooling
    np.testing.assert_allclose(compute_embeddings(model, x, source.mean, source.std, pool="max", progress=False),
                               z[:, 512:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiscale needs a timm model"):
        compute_embeddings(model, x, source.mean, source.std, pool="multiscale", progress=False)
    lite = resolve_weights("tf_efficientnet_lite0", "none")
    z = compute_embeddings(create_model("tf_efficientnet_lite0", 2, lite), x, lite.mean, lite.std,
                           pool="multiscale", progress=False)
    assert z.shape == (2, 2 * (16 + 24 + 40 + 112 + 320 + 1280))
