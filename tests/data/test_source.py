"""Batch sources: rows in the order asked, from memory or the memory-mapped cache, subsets, lazy opening, and the
choice between them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from smallct.config.run import TrainConfig
from smallct.data import source as sources
from smallct.data.source import DiskSource, MemorySource, as_source, choose_store
from smallct.engine.train import fit, predict_proba
from smallct.models.factory import create_model
from smallct.models.weights import resolve_weights


@pytest.fixture
def rows(tmp_path):
    """20 distinct uint8 images (3 x 8 x 8) as a tensor and as a .npy file."""
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8))
    path = tmp_path / "images.npy"
    np.save(path, x.numpy())
    return x, path


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_rows_come_in_the_order_asked_with_repeats(rows, kind):
    x, path = rows
    source = MemorySource(x) if kind == "memory" else DiskSource(path)
    asked = [7, 2, 19, 2, 0, 11]  # unsorted, with a repeat: a 2.5D gather asks so
    assert torch.equal(source.read(asked), x[asked])
    assert torch.equal(source.read(torch.tensor(asked)), x[asked])
    batches = list(source.batches([[3, 1], [5], [19, 0, 4]]))
    assert [b.tolist() for b in batches] == [x[[3, 1]].tolist(), x[[5]].tolist(), x[[19, 0, 4]].tolist()]
    assert torch.equal(torch.cat(list(source.in_batches(6))), x)  # every row in order, 6 at a time
    assert torch.equal(source.head(3), x[:3])


def test_a_subset_reads_its_parents_rows_and_a_subset_of_it_flattens(rows):
    x, path = rows
    train = np.array([15, 3, 8, 12, 1])
    sub = DiskSource(path).take(train)
    assert len(sub) == 5 and sub.shape == (5, 3, 8, 8)
    assert torch.equal(sub.read([4, 0]), x[[1, 15]])
    inner = sub.take([2, 4])  # nested CV: an inner fold of an outer training part
    assert isinstance(inner.parent, DiskSource) and inner.index.tolist() == [8, 1]
    assert torch.equal(torch.cat(list(inner.in_batches(1))), x[[8, 1]])
    with pytest.raises(IndexError, match="of a set of 20"):
        DiskSource(path).take([3, 20])


def test_the_disk_source_reads_each_batch_sorted_and_ahead(rows, monkeypatch):
    x, path = rows
    source = DiskSource(path, prefetch=2)
    asked = []

    class Spy:
        def __getitem__(self, index):
            asked.append(np.asarray(index).tolist())
            return np.load(path)[index]

    monkeypatch.setattr(DiskSource, "array", property(lambda self: Spy()))
    out = source.read([9, 4, 17, 0])
    assert asked == [[0, 4, 9, 17]]  # front to back in the file
    assert torch.equal(out, x[[9, 4, 17, 0]])
    asked.clear()
    batches = source.batches([[1], [2], [3], [4], [5]])
    first = next(batches)
    assert torch.equal(first, x[[1]])
    # while the first batch is used, the next ones are being read (up to prefetch + 1 in all)
    import time
    deadline = time.time() + 5
    while len(asked) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert asked[:3] == [[1], [2], [3]]
    assert [b.tolist() for b in batches] == [x[[i]].tolist() for i in (2, 3, 4, 5)]


def test_a_disk_source_pickles_its_path_not_its_data_and_opens_again_lazily(rows):
    x, path = rows
    source = DiskSource(path)
    source.read([0])  # mapped in this process
    blob = pickle.dumps(source.take(np.arange(20)))
    assert len(blob) < x.numel() // 2  # the 3,840 bytes of pixels did not travel
    copy = pickle.loads(blob)
    assert copy.parent._array is None  # opened on first use, in the process that reads
    assert torch.equal(copy.read([5, 6]), x[[5, 6]])


def test_choose_store_keeps_small_sets_in_memory_and_counts_the_machines_processes(monkeypatch):
    monkeypatch.setattr(sources, "available_memory", lambda: 64 * 2**30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    limit = sources.AUTO_MEMORY_BYTES
    assert choose_store("auto", limit) == "memory"
    assert choose_store("auto", limit + 1) == "disk"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine each hold a copy
    assert choose_store("auto", limit // 2) == "disk"
    assert choose_store("auto", limit // 4) == "memory"
    monkeypatch.setattr(sources, "available_memory", lambda: limit)  # little memory left: a quarter of it
    assert choose_store("auto", limit // 4 + 1, processes=1) == "disk"
    assert choose_store("memory", 10**15) == "memory" and choose_store("disk", 1) == "disk"
    with pytest.raises(ValueError, match="--cache ram"):
        choose_store("ram", 1)


def test_memory_source_refuses_what_is_not_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        MemorySource(torch.zeros(2, 3, 4, 4))
    assert isinstance(as_source(np.zeros((2, 3, 4, 4), np.uint8)), MemorySource)


def test_fit_and_predict_give_bit_identical_results_from_memory_and_from_disk(rows, monkeypatch):
    """A fold's training rows as a subset of a disk source train the same model as the same rows in memory."""
    x, path = rows
    y = torch.tensor([0, 1] * 10)
    train, test = np.array([0, 2, 3, 5, 7, 8, 11, 12, 14, 15, 17, 19]), np.array([1, 4, 6, 9, 10, 13, 16, 18])
    cfg = TrainConfig(epochs=2, batch_size=5, augment="affine", lr=0.05)
    results = []
    for source in (MemorySource(x), DiskSource(path, prefetch=1)):
        torch.manual_seed(0)
        model = create_model("resnet18", 2, resolve_weights("resnet18", "none"))
        history = fit(model, source.take(train), y[train], cfg, (0.5,) * 3, (0.25,) * 3, seed=3,
                      val=(source.take(test), y[test]), progress=False)
        probs = predict_proba(model, source.take(test), (0.5,) * 3, (0.25,) * 3, tta=True)
        results.append((history, probs, model.state_dict()))
    (h1, p1, s1), (h2, p2, s2) = results
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]
    assert [r["val_loss"] for r in h1] == [r["val_loss"] for r in h2]
    np.testing.assert_array_equal(p1, p2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # and the same as the rows copied out as a tensor (smallct 0.4's way)
    torch.manual_seed(0)
    model = create_model("resnet18", 2, resolve_weights("resnet18", "none"))
    h3 = fit(model, x[train], y[train], cfg, (0.5,) * 3, (0.25,) * 3, seed=3, val=(x[test], y[test]), progress=False)
    assert [r["train_loss"] for r in h3] == [r["train_loss"] for r in h1]


def test_a_boolean_mask_selects_its_true_rows_and_other_kinds_are_refused(rows):
    x, path = rows
    mask = np.zeros(20, bool)
    mask[[2, 5, 11]] = True
    for source in (MemorySource(x), DiskSource(path)):
        assert torch.equal(source.take(mask).read([0, 1, 2]), x[[2, 5, 11]])
        assert torch.equal(source.read(mask), x[[2, 5, 11]])
        with pytest.raises(IndexError, match="a mask of 3 rows for a set of 20"):
            source.take(np.ones(3, bool))
        with pytest.raises(IndexError, match="integers or a boolean mask"):
            source.read(np.array([0.5, 1.0]))


def test_a_disk_source_reopened_over_a_changed_file_says_so(rows, tmp_path):
    x, path = rows
    source = pickle.loads(pickle.dumps(DiskSource(path)))  # as a worker receives it
    np.save(path, np.zeros((4, 3, 8, 8), np.uint8))  # the cache built again meanwhile
    with pytest.raises(ValueError, match="holds .4, 3, 8, 8. images, .20, 3, 8, 8. when this run opened it"):
        source.read([0])
