"""The decoded-image cache: one uint8 tensor per (files, settings), read back, invalidated by a changed file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smallct.data.cache import cache_key, load_images
from smallct.io.files import cache_dir
from smallct.io.images import preprocess as prepare


@pytest.fixture
def images(phantom_dir, tmp_path):
    """Six phantom PNGs (mixed modes) copied, so that a test may change them."""
    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted(phantom_dir.glob("*.png"))[:6]:
        shutil.copy2(f, folder / f.name)
    return sorted(folder.glob("*.png"))


def _expected(files, size, resize="pad", crop=True) -> np.ndarray:
    return np.stack([prepare(f, size, resize, crop).transpose(2, 0, 1) for f in files])


def _cached(folder):
    return sorted(folder.glob("images-*.npy"))


def test_load_images_decodes_into_one_uint8_tensor_and_writes_one_cache_file(images, tmp_path):
    store = tmp_path / "cache"
    x = load_images(images, 32, cache=store, workers=1, progress=False)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(x.numpy(), _expected(images, 32))
    assert len(_cached(store)) == 1
    np.testing.assert_array_equal(np.load(_cached(store)[0]), x.numpy())
    assert not list(store.glob("*.tmp*"))  # written atomically, no leftovers


def test_second_call_reads_the_cache(images, tmp_path):
    store = tmp_path / "cache"
    load_images(images, 32, cache=store, workers=1, progress=False)
    path, = _cached(store)
    np.save(path, np.full((6, 3, 32, 32), 7, np.uint8))  # a marker no decoding can give
    assert (load_images(images, 32, cache=store, workers=1, progress=False) == 7).all()
    # other settings are another entry, decoded afresh
    for kwargs in ({"size": 16}, {"size": 32, "resize": "squash"}, {"size": 32, "crop": False}):
        x = load_images(images, cache=store, workers=1, progress=False, **kwargs)
        np.testing.assert_array_equal(x.numpy(), _expected(images, **{"resize": "pad", "crop": True, **kwargs}))
    assert len(_cached(store)) == 4


def test_a_touched_or_changed_file_invalidates_the_cache(images, tmp_path):
    store = tmp_path / "cache"
    load_images(images, 32, cache=store, workers=1, progress=False)
    np.save(_cached(store)[0], np.full((6, 3, 32, 32), 7, np.uint8))
    key = cache_key(images, 32, "pad", True)

    st = images[2].stat()
    os.utime(images[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer mtime
    assert cache_key(images, 32, "pad", True) != key
    x = load_images(images, 32, cache=store, workers=1, progress=False)
    np.testing.assert_array_equal(x.numpy(), _expected(images, 32))

    # new content of another size (mtime kept): a white square instead of the slice
    mtime = images[4].stat().st_mtime_ns
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(images[4])
    os.utime(images[4], ns=(mtime, mtime))
    x = load_images(images, 32, cache=store, workers=1, progress=False)
    np.testing.assert_array_equal(x.numpy(), _expected(images, 32))
    assert (x[4] == 255).all() and not (x[3] == 255).all()
    assert len(_cached(store)) == 3


def test_a_damaged_cache_file_is_rebuilt(images, tmp_path):
    store = tmp_path / "cache"
    expected = load_images(images, 32, cache=store, workers=1, progress=False).numpy()
    path, = _cached(store)
    path.write_bytes(b"\x93NUMPY not really")
    np.testing.assert_array_equal(load_images(images, 32, cache=store, workers=1, progress=False).numpy(), expected)
    np.testing.assert_array_equal(np.load(path), expected)  # rewritten whole


def test_default_folder_is_smallct_cache_and_cache_false_writes_nothing(images, tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLCT_CACHE", str(tmp_path / "env-cache"))
    assert cache_dir() == tmp_path / "env-cache"
    x = load_images(images, 32, cache=False, workers=1, progress=False)
    np.testing.assert_array_equal(x.numpy(), _expected(images, 32))
    assert not (tmp_path / "env-cache").exists()
    load_images(images, 32, workers=1, progress=False)  # cache=None: $SMALLCT_CACHE
    assert len(_cached(tmp_path / "env-cache")) == 1
    monkeypatch.delenv("SMALLCT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "smallct"


def test_worker_processes_give_the_same_array(phantom_dir):
    files = sorted(phantom_dir.glob("*.png"))[:16]  # 16: the smallest set decoded by a process pool
    one = load_images(files, 32, cache=False, workers=1, progress=False)
    two = load_images(files, 32, cache=False, workers=2, progress=False)
    assert torch.equal(one, two)
    assert len({bytes(img.numpy()) for img in one}) == 16  # rows are distinct images, in file order
    np.testing.assert_array_equal(one[5].numpy(), prepare(files[5], 32).transpose(2, 0, 1))
