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


# --- built in chunks, resumable, locked, checked (smallct 0.5) --------------------------------------------------

_DYING_BUILD = """
import os, signal, sys
from pathlib import Path
import smallct.data.cache as c
c.chunk_rows = lambda size: 4
files = [Path(p) for p in sys.argv[3:]]
decoded = 0
real = c._preprocess_chw
def dying(job):
    global decoded
    decoded += 1
    if decoded == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9, in the middle of a chunk
    return real(job)
c._preprocess_chw = dying
c.build_cache(files, 32, path=Path(sys.argv[1]), workers=1, progress=False)
"""


def _run(script: str, *args, env=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_build_killed_mid_chunk_resumes_with_its_finished_chunks_and_equals_an_uninterrupted_one(
        phantom_dir, tmp_path, monkeypatch):
    import smallct.data.cache as cache
    files = sorted(phantom_dir.glob("*.png"))[:18]  # 5 chunks of 4 rows (the last of 2)
    path = tmp_path / "cache" / "images-test.npy"
    proc = _run(_DYING_BUILD, path, 11, *files)  # dies decoding image 11: chunks 0 and 1 written, 2 not
    assert proc.returncode == -9
    assert not path.exists()  # no final name for a partial cache
    record = Path(f"{path}.chunks").read_bytes()  # rows per chunk, then one byte per chunk
    assert np.frombuffer(record[:4], "<u4").tolist() == [4]
    assert np.frombuffer(record[4:], np.uint8).tolist() == [1, 1, 0, 0, 0]

    monkeypatch.setattr(cache, "chunk_rows", lambda size: 4)
    decoded, real = [], cache._preprocess_chw
    monkeypatch.setattr(cache, "_preprocess_chw", lambda job: decoded.append(job[0]) or real(job))
    lines = []
    cache.build_cache(files, 32, path=path, workers=1, progress=False, log=lines.append)
    assert decoded == files[8:]  # only the unfinished chunks were decoded again
    assert any("resuming the image cache" in line and "2 of 5 chunks" in line for line in lines)
    np.testing.assert_array_equal(np.load(path), _expected(files, 32))  # = an uninterrupted build
    assert not Path(f"{path}.partial").exists() and not Path(f"{path}.chunks").exists()


def test_a_damaged_cache_is_said_and_rebuilt_never_read_as_images(images, tmp_path):
    from smallct.data.cache import open_images
    store = tmp_path / "cache"
    open_images(images, 32, cache=store, workers=1, progress=False)
    path, = _cached(store)
    with open(path, "r+b") as fh:  # cut short, as a full disk or a killed copy leaves it
        fh.truncate(path.stat().st_size - 100)
    lines = []
    source = open_images(images, 32, cache=store, store="disk", workers=1, progress=False, log=lines.append)
    assert any("is damaged" in line and str(path) in line for line in lines)
    np.testing.assert_array_equal(source.read(np.arange(6)).numpy(), _expected(images, 32))
    np.save(path, np.zeros((5, 3, 32, 32), np.uint8))  # a whole .npy of another shape
    lines.clear()
    x = open_images(images, 32, cache=store, workers=1, progress=False, log=lines.append)
    assert any("is damaged (holds uint8 (5, 3, 32, 32)" in line for line in lines)
    np.testing.assert_array_equal(x.tensor.numpy(), _expected(images, 32))


_SMALL_DISK = """
import resource, sys
from pathlib import Path
import smallct.data.cache as c
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a disk that takes 20 kB more
try:
    c.build_cache([Path(p) for p in sys.argv[2:]], 64, path=Path(sys.argv[1]), workers=1, progress=False)
except OSError as err:
    print(err)
    sys.exit(3)
"""


def test_a_full_disk_is_one_line_naming_the_folder_and_the_space_and_leaves_no_cache(images, tmp_path):
    path = tmp_path / "cache" / "images-test.npy"
    proc = _run(_SMALL_DISK, path, *images)
    assert proc.returncode == 3, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and str(path.parent) in line
    assert "cannot write the image cache" in line and "needs" in line and "SMALLCT_CACHE" in line
    assert not path.exists() and not Path(f"{path}.partial").exists()
    from smallct.data.cache import build_cache
    build_cache(images, 64, path=path, workers=1, progress=False)  # room again: a good cache
    np.testing.assert_array_equal(np.load(path), _expected(images, 64))


def test_too_little_free_space_is_said_before_anything_is_written(images, tmp_path, monkeypatch):
    import shutil as sh
    import smallct.data.cache as cache
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: sh._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    path = tmp_path / "cache" / "images-test.npy"
    with pytest.raises(OSError, match=r"cache: cannot write the image cache \(1 KiB free\): it needs 18.0 MiB"):
        cache.build_cache(images, 1024, path=path, workers=1, progress=False)
    assert not list(path.parent.iterdir()) or [p.name for p in path.parent.iterdir()] == ["images-test.npy.lock"]


_BUILDER = """
import sys, time
from pathlib import Path
import smallct.data.cache as c
real = c._preprocess_chw
def slow(job):
    time.sleep(0.05)
    print("decoded", job[0].name, flush=True)
    return real(job)
c._preprocess_chw = slow
c.build_cache([Path(p) for p in sys.argv[2:]], 32, path=Path(sys.argv[1]), workers=1, progress=False, log=print)
"""


def test_two_processes_building_the_same_cache_end_with_one_good_cache_decoded_once(images, tmp_path):
    import subprocess
    import sys
    path = tmp_path / "cache" / "images-test.npy"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(path), *map(str, images)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(out.count("decoded ") for out in outs) == len(images)  # one built, the other waited and read it
    np.testing.assert_array_equal(np.load(path), _expected(images, 32))


def test_a_large_set_is_not_stated_at_every_start_but_a_changed_file_is_still_found(images, tmp_path, monkeypatch):
    import smallct.data.cache as cache
    from smallct.data.cache import open_images
    monkeypatch.setattr(cache, "STAT_ALL", 3)  # six files: a "large" set
    monkeypatch.setattr(cache, "STAT_SAMPLE", 2)  # rows 0 and 5 checked at each start
    store = tmp_path / "cache"
    open_images(images, 32, cache=store, workers=1, progress=False)
    path, = _cached(store)
    assert np.load(f"{path}.stats").shape == (6, 2)
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(cache.os, "stat", lambda p, *a, **k: calls.append(p) or real_stat(p, *a, **k))
    open_images(images, 32, cache=store, workers=1, progress=False)
    assert len([c for c in calls if str(c).endswith(".png")]) == 2  # not six
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(images[2])  # not in the sample
    assert (open_images(images, 32, cache=store, workers=1, progress=False).read([2]) != 255).any()
    lines = []
    x = open_images(images, 32, cache=store, workers=1, progress=False, verify=True, log=lines.append)
    assert any("files changed since" in line for line in lines)
    assert (x.read([2]) == 255).all()


def test_a_complete_cache_is_read_without_its_lock(images, tmp_path, monkeypatch):
    """A cache folder shared read-only (or without file locks) still serves a finished cache."""
    import smallct.data.cache as cache
    store = tmp_path / "cache"
    first = cache.open_images(images, 32, cache=store, workers=1, progress=False).tensor
    monkeypatch.setattr(cache.fcntl, "flock", lambda *a: (_ for _ in ()).throw(PermissionError("read-only")))
    assert torch.equal(cache.open_images(images, 32, cache=store, workers=1, progress=False).tensor, first)


def test_decoding_holds_at_most_about_one_cache_chunk_in_flight(images, tmp_path, monkeypatch):
    import smallct.data.cache as cache
    asked = {}
    real = cache.parallel_map
    monkeypatch.setattr(cache, "parallel_map", lambda *a, **k: asked.update(k) or real(*a, **k))
    monkeypatch.setattr(cache, "chunk_rows", lambda size: 64)
    cache.build_cache(images, 32, path=tmp_path / "c" / "images-x.npy", workers=2, progress=False)
    assert asked["max_chunk"] == 64 // (cache.IN_FLIGHT * 2)  # 4 chunks in flight per worker: 64 rows in all


def test_no_disk_cache_decodes_into_memory_whatever_auto_would_choose(images, monkeypatch):
    import smallct.data.source as sources
    from smallct.data.cache import open_images
    monkeypatch.setattr(sources, "AUTO_MEMORY_BYTES", 1)  # auto would say disk
    x = open_images(images, 32, cache=False, workers=1, progress=False)
    np.testing.assert_array_equal(x.tensor.numpy(), _expected(images, 32))
    with pytest.raises(ValueError, match="--cache disk needs the decoded-image cache on disk"):
        open_images(images, 32, cache=False, store="disk", workers=1, progress=False)


def test_a_large_sets_rebuilt_cache_takes_its_thumbnails_and_a_damaged_record_along(images, tmp_path, monkeypatch):
    """Above STAT_ALL files the key names paths only: a rebuild reuses the cache's name, so whatever lies beside it
    (thumbnails, the record of sizes and times) must go with the old images."""
    import smallct.data.cache as cache
    from smallct.data.similar import thumbnail_table
    monkeypatch.setattr(cache, "STAT_ALL", 3)
    store = tmp_path / "cache"
    old = thumbnail_table(cache.open_images(images, 32, cache=store, store="disk", workers=1, progress=False))
    old = np.array(old)
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(images[2])
    source = cache.open_images(images, 32, cache=store, store="disk", workers=1, progress=False, verify=True)
    new = thumbnail_table(source)
    assert not np.array_equal(new[2], old[2]) and np.array_equal(new[0], old[0])
    np.testing.assert_array_equal(new, thumbnail_table(source.read(np.arange(6))))  # as from the images
    path = source.path
    Path(f"{path}.stats").write_bytes(b"\x93NUMPY half a record")  # a record cut short
    lines = []
    again = cache.open_images(images, 32, cache=store, store="disk", workers=1, progress=False, log=lines.append)
    assert any("files changed since" in line for line in lines)  # read as unknown: built again, no crash
    np.testing.assert_array_equal(again.read(np.arange(6)).numpy(), _expected(images, 32))


def test_a_partial_build_of_a_large_set_is_not_resumed_over_changed_files(phantom_dir, tmp_path, monkeypatch):
    import smallct.data.cache as cache
    monkeypatch.setattr(cache, "STAT_ALL", 3)
    files = []
    for i, f in enumerate(sorted(phantom_dir.glob("*.png"))[:18]):
        files.append(tmp_path / "set" / f.name)
        files[-1].parent.mkdir(exist_ok=True)
        shutil.copy2(f, files[-1])
    store = tmp_path / "cache"
    path = cache.cache_path(files, 32, cache=store)
    proc = _run("import smallct.data.cache as c; c.STAT_ALL = 3\n" + _DYING_BUILD.replace(
        "c.build_cache(files, 32, path=Path(sys.argv[1]), workers=1, progress=False)",
        "c.open_images(files, 32, cache=Path(sys.argv[1]).parent, workers=1, progress=False)"), path, 11, *files)
    assert proc.returncode == -9 and Path(f"{path}.partial").exists() and Path(f"{path}.stats").exists()
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(files[1])  # in a finished chunk
    monkeypatch.setattr(cache, "chunk_rows", lambda size: 4)
    lines = []
    x = cache.open_images(files, 32, cache=store, workers=1, progress=False, verify=True, log=lines.append)
    assert any("files changed since" in line for line in lines)
    assert (x.read([1]) == 255).all()
    np.testing.assert_array_equal(x.read(np.arange(18)).numpy(), _expected(files, 32))
