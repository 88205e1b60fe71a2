"""The decoded-image cache: images decoded, normalised and resized once, kept as one uint8 ``.npy`` file.

Training never opens an image file: :func:`open_images` returns a :class:`smallct.data.source.BatchSource` of the
(N, 3, S, S) uint8 images, decoded with every core the first time and read back from disk afterwards (in memory
for small sets, memory-mapped for large ones: ``--cache memory|disk|auto``). The cache lives in
:func:`smallct.io.files.cache_dir` (``$SMALLCT_CACHE``, default ``~/.cache/smallct``), never in the data folder
(which may be read-only).

* **Key.** The preprocessing settings and each file's path; for sets up to :data:`STAT_ALL` files also each
  file's size and modification time (a changed file gives another cache). Larger sets are not stat'ed on every
  start: their sizes and times are kept beside the cache (``.stats``), and :data:`STAT_SAMPLE` of them,
  spread over the set, are checked at each start (all of them with ``verify=True`` or ``SMALLCT_VERIFY_CACHE=1``);
  a changed file rebuilds the cache.
* **Built in chunks, resumable.** The file is preallocated (``open_memmap``'s header, then ``posix_fallocate``:
  a full disk is one line before any decoding) and filled chunk by chunk by the decoding workers; a record of
  finished chunks (``.chunks``) lets a killed build resume where it stopped. Only when every chunk is written is
  the file renamed to its final name: a final name is a complete cache. The whole array is never in memory.
* **Several builders.** A lock file (``flock``) lets one process build while the others wait, then read.
* **Damage.** A final file whose header or length does not match what was asked is said in one line, removed
  and rebuilt, never read as images.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from smallct.data.source import BatchSource, DiskSource, MemorySource, choose_store
from smallct.io.files import atomic_npy, cache_dir, move_into_place
from smallct.io.images import preprocess
from smallct.parallel import IN_FLIGHT, parallel_map, workers_for

CACHE_VERSION = 1  # bump when the preprocessing changes what a cached image holds
STAT_ALL = 50_000  # sets up to this many files are stat'ed at every start (milliseconds)
STAT_SAMPLE = 1_000  # files of a larger set stat'ed at every start
CHUNK_BYTES = 64 * 2**20  # a chunk of the cache (rows decoded, written and recorded together)


def _stats(files) -> np.ndarray:
    """(N, 2) int64: each file's size and modification time in ns."""
    out = np.empty((len(files), 2), np.int64)
    for i, path in enumerate(files):
        st = os.stat(path)
        out[i] = st.st_size, st.st_mtime_ns
    return out


def cache_key(files: list[Path], size: int, resize: str, crop: bool) -> str:
    """The cache's name for ``files`` decoded at ``size`` px with ``resize`` and ``crop``.

    Up to :data:`STAT_ALL` files it covers each file's path, size and modification time; beyond, the paths only
    (sizes and times are checked against the ``.stats`` kept beside the cache)."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{resize}|{crop}".encode())
    if len(files) <= STAT_ALL:
        for path, (nbytes, mtime) in zip(files, _stats(files)):
            h.update(f"|{Path(path).resolve()}|{nbytes}|{mtime}".encode())
    else:
        h.update(f"|paths{len(files)}".encode())
        for path in files:
            h.update(f"|{os.path.abspath(path)}".encode())
    return h.hexdigest()[:20]


def _preprocess_chw(args) -> np.ndarray:
    path, size, resize, crop = args
    return preprocess(path, size, resize, crop).transpose(2, 0, 1)


def decode_all(files: list[Path], size: int, resize: str = "pad", crop: bool = True, workers: int = 0,
               progress: bool = True) -> np.ndarray:
    """Decode and preprocess every file into memory: (N, 3, size, size) uint8. ``workers=0`` uses every core."""
    jobs = [(Path(f), size, resize, crop) for f in files]
    out = np.empty((len(files), 3, size, size), np.uint8)
    decoded = parallel_map(_preprocess_chw, jobs, workers, progress, desc=f"decoding {len(jobs)} images", unit="img",
                           leave=False)
    for i, arr in enumerate(decoded):
        out[i] = arr
    return out


def chunk_rows(size: int) -> int:
    """Rows of a cache chunk at ``size`` px (about :data:`CHUNK_BYTES`; 16 to 4,096)."""
    return int(np.clip(CHUNK_BYTES // (3 * size * size), 16, 4096))


def cache_path(files: list[Path], size: int, resize: str = "pad", crop: bool = True,
               cache: Path | None = None) -> Path:
    """Where the cache of ``files`` at these settings lives (``cache``: a folder, None for :func:`cache_dir`)."""
    folder = Path(cache) if cache is not None else cache_dir()
    return folder / f"images-{cache_key(files, size, resize, crop)}.npy"


SIDECARS = (".partial", ".chunks", ".stats", ".thumbs64")  # files beside a cache that describe or derive from it


def sidecar(path: Path, suffix: str) -> Path:
    """A file beside the cache ``path`` (``images-KEY.npy.stats``, ...): :data:`SIDECARS` names them, and a cache
    removed or built again takes every one of them with it."""
    return path.with_name(path.name + suffix)


def remove_cache(path: Path) -> None:
    """Remove the cache ``path`` and everything beside it that describes or derives from it (not its lock)."""
    for suffix in SIDECARS:
        sidecar(path, suffix).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def damage(path: Path, shape: tuple[int, ...]) -> str | None:
    """What is wrong with the cache file ``path`` for images of ``shape`` (None: nothing)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"unreadable ({err})"
    if array.dtype != np.uint8 or tuple(array.shape) != tuple(shape):
        return f"holds {array.dtype} {tuple(array.shape)}, expected uint8 {tuple(shape)}"
    expected = array.offset + array.nbytes
    actual = path.stat().st_size
    return None if actual == expected else f"{actual} bytes, expected {expected}"


@contextmanager
def _locked(path: Path, log):
    """Hold the build lock of ``path`` (waiting, and saying so, while another process holds it). A file system
    without locks (some network mounts) builds unlocked, saying so."""
    with open(sidecar(path, ".lock"), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another process building the image cache {path.name}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            if log is not None:
                log(f"{path.parent}: no file locks here ({err.strerror}); building the image cache unlocked")
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _size(n: int) -> str:
    """Bytes for people: ``18.0 MiB``, ``137.3 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


def _no_space(folder: Path, need: int, why: str) -> OSError:
    return OSError(f"{folder}: cannot write the image cache ({why}): it needs {_size(need)}; free space there or set "
                   "SMALLCT_CACHE to a folder on a larger disk")


def _allocate(partial: Path, shape: tuple[int, ...]) -> int:
    """Create the partial cache file: the ``.npy`` header and its whole length reserved. Returns the data offset."""
    need = int(np.prod(shape)) + 128
    free = shutil.disk_usage(partial.parent).free
    if free < need:
        raise _no_space(partial.parent, need, f"{_size(free)} free")
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        offset = array.offset
        del array
        fd = os.open(partial, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, offset + int(np.prod(shape)))
        finally:
            os.close(fd)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise _no_space(partial.parent, need, err.strerror) from None
        raise
    return offset


def build_cache(files: list[Path], size: int, resize: str = "pad", crop: bool = True, path: Path | None = None,
                workers: int = 0, progress: bool = True, log=None) -> Path:
    """Decode ``files`` into the cache file ``path`` (default :func:`cache_path`), chunk by chunk; returns the path.

    Resumes a build that was stopped (its finished chunks are kept); waits while another process builds the same
    cache; a damaged file is said (``log``), removed and rebuilt. A full disk: ``OSError`` in one line, naming the
    folder and the space needed.
    """
    files = [Path(f) for f in files]
    path = Path(path) if path is not None else cache_path(files, size, resize, crop)
    shape = (len(files), 3, size, size)
    if path.is_file() and damage(path, shape) is None:
        return path  # a complete cache is read without its lock (a read-only cache folder works)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, log):
        if path.is_file():
            why = damage(path, shape)
            if why is None:
                return path  # built by another process meanwhile
            if log is not None:
                log(f"the image cache {path} is damaged ({why}): building it again")
            remove_cache(path)
        _build(files, shape, resize, crop, path, workers, progress, log)
    return path


def _build(files, shape, resize, crop, path: Path, workers, progress, log) -> None:
    partial, record = sidecar(path, ".partial"), sidecar(path, ".chunks")
    n, size = shape[0], shape[2]
    rows = chunk_rows(size)
    n_chunks = -(-n // rows)
    head = np.array([rows], "<u4").tobytes()  # the record: rows per chunk, then one byte per chunk (1: written)
    done = np.zeros(n_chunks, np.uint8)
    if partial.is_file() and record.is_file() and damage(partial, shape) is None:
        kept = record.read_bytes()
        if kept[:4] == head and len(kept) == 4 + n_chunks:
            done = np.frombuffer(kept[4:], np.uint8).copy()
    if not done.any():
        record.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)  # before the free-space check: its space is free again
        offset = _allocate(partial, shape)
        record.write_bytes(head + bytes(n_chunks))
    else:
        offset = np.load(partial, mmap_mode="r").offset
        if log is not None:
            log(f"resuming the image cache {path.name}: {int(done.sum())} of {n_chunks} chunks already decoded")
    todo = [c for c in range(n_chunks) if not done[c]]
    jobs = [(files[i], size, resize, crop) for c in todo for i in range(c * rows, min((c + 1) * rows, n))]
    in_flight = IN_FLIGHT * workers_for(workers, max(len(jobs), 1))  # job chunks decoded and not yet written
    decoded = parallel_map(_preprocess_chw, jobs, workers, progress, desc=f"decoding {len(jobs)} images",
                           unit="img", leave=False, max_chunk=max(1, rows // in_flight))  # at most a cache chunk
    row_bytes = 3 * size * size
    data = os.open(partial, os.O_RDWR)
    marks = os.open(record, os.O_RDWR)
    try:
        for c in todo:
            lo, hi = c * rows, min((c + 1) * rows, n)
            buf = np.empty((hi - lo, 3, size, size), np.uint8)
            for i in range(hi - lo):
                buf[i] = next(decoded)
            try:
                os.pwrite(data, buf.data, offset + lo * row_bytes)
                os.fdatasync(data)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise _no_space(path.parent, (n - lo) * row_bytes, err.strerror) from None
                raise
            os.pwrite(marks, b"\x01", 4 + c)  # only now: the chunk's rows are on disk
    finally:
        decoded.close()
        os.close(data)
        os.close(marks)
    move_into_place(partial, path)
    record.unlink(missing_ok=True)


def _same_files(files: list[Path], path: Path, verify: bool) -> bool:
    """For sets of more than :data:`STAT_ALL` files: whether the files still have the sizes and times recorded
    beside the cache ``path`` (``.stats``: a sample of them, or all with ``verify``); False without a readable
    record."""
    try:
        recorded = np.load(sidecar(path, ".stats"))
    except (OSError, ValueError, EOFError):
        return False
    if recorded.shape != (len(files), 2):
        return False
    rows = (np.arange(len(files)) if verify
            else np.unique(np.linspace(0, len(files) - 1, min(STAT_SAMPLE, len(files))).astype(int)))
    return bool((_stats([files[i] for i in rows]) == recorded[rows]).all())


def _check_large(files: list[Path], path: Path, verify: bool, log) -> None:
    """A large set's cache (or its partial build) is kept only while its files are those it was made of; the sizes
    and times are recorded before a build starts, so that a resumed build is checked too."""
    started = path.is_file() or sidecar(path, ".partial").is_file()
    if started and _same_files(files, path, verify):
        return
    if started:
        if log is not None:
            log(f"files changed since the image cache {path.name} was started: building it again")
        remove_cache(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_npy(sidecar(path, ".stats"), _stats(files))


def open_images(files: list[Path], size: int, resize: str = "pad", crop: bool = True,
                cache: Path | bool | None = None, store: str = "auto", workers: int = 0, progress: bool = True,
                log=None, verify: bool | None = None) -> BatchSource:
    """The images of ``files`` at ``size`` px, decoded as ``resize`` and ``crop`` say, as a batch source.

    ``cache``: a folder, ``None`` for :func:`cache_dir`, or ``False`` for no disk cache (decoded into memory).
    ``store``: ``memory``, ``disk`` or ``auto`` (:func:`smallct.data.source.choose_store`). ``verify``: check every
    file of a large set against the cache's record (default: ``SMALLCT_VERIFY_CACHE=1``).
    """
    files = [Path(f) for f in files]
    if cache is False:  # no file to map: decoded into memory, whatever auto would choose
        if store == "disk":
            raise ValueError("--cache disk needs the decoded-image cache on disk (it was turned off)")
        choose_store(store, 0)  # an unknown store is still an error
        return MemorySource(torch.from_numpy(decode_all(files, size, resize, crop, workers, progress)))
    store = choose_store(store, len(files) * 3 * size * size)
    path = cache_path(files, size, resize, crop, None if cache is None else Path(cache))
    if len(files) > STAT_ALL:
        _check_large(files, path, os.environ.get("SMALLCT_VERIFY_CACHE") == "1" if verify is None else verify, log)
    build_cache(files, size, resize, crop, path, workers, progress, log)
    if store == "memory":
        return MemorySource(torch.from_numpy(np.load(path)))
    return DiskSource(path)


def load_images(files: list[Path], size: int, resize: str = "pad", crop: bool = True,
                cache: Path | bool | None = None, workers: int = 0, progress: bool = True) -> torch.Tensor:
    """All images as one (N, 3, size, size) uint8 tensor in memory, through the on-disk cache (small sets; large
    ones: :func:`open_images`).

    ``cache``: a folder, ``None`` for :func:`cache_dir`, or ``False`` for no disk cache.
    """
    return open_images(files, size, resize, crop, cache, "memory", workers, progress).tensor
