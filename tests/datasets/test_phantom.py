"""The synthetic head-CT phantom: HU values of its tissues, its lesion mask, and the PNG set like Head CT."""

from __future__ import annotations

import numpy as np
from PIL import Image

from smallct.datasets.folder import load_dataset
from smallct.datasets.phantom import AIR, BONE, BRAIN, head_phantom_hu, PNG_FORMATS, write_phantom_png_set


def _slice(seed: int, **kw):
    return head_phantom_hu(96, rng=np.random.default_rng(seed), **kw)


def test_slice_is_deterministic_under_a_seed():
    a, b, c = _slice(1), _slice(1), _slice(2)
    assert a.dtype == np.float32 and a.shape == (96, 96)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(head_phantom_hu(64), head_phantom_hu(64))  # no rng: a fixed default


def test_tissues_have_plausible_hounsfield_units():
    hu = _slice(0)
    noise = 5 * 3.0  # five standard deviations of the added noise
    corners = np.concatenate([hu[:4, :4].ravel(), hu[-4:, -4:].ravel()])
    assert np.abs(corners - AIR).max() < noise  # air around the head
    assert BONE - 200 - noise < hu.max() < BONE + 200 + noise  # the skull
    assert (hu > 500).mean() > 0.02
    soft = hu[(hu > -100) & (hu < 200)]  # brain, ventricles (and no lesion here)
    assert abs(np.median(soft) - BRAIN) < 5
    assert hu.min() > AIR - noise


def test_lesion_mask_marks_the_hyperdense_lesion():
    hu, mask = _slice(3, lesion=True, return_mask=True)
    assert mask.dtype == bool and mask.shape == hu.shape and 5 < mask.sum() < 0.05 * mask.size
    assert 55 - 5 < hu[mask].mean() < 85 + 5  # acute blood, 55-85 HU drawn, plus noise
    ring = np.zeros_like(mask)  # the pixels just around the lesion: brain, not air or bone
    ys, xs = np.nonzero(mask)
    ring[max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3] = True
    ring &= ~mask
    assert np.all((hu[ring] > -20) & (hu[ring] < 100))
    assert hu[mask].mean() - np.median(hu[ring]) > 15
    # the mask is only reported: the slice is the same with and without it
    np.testing.assert_array_equal(_slice(3, lesion=True), hu)
    plain, none = _slice(3, return_mask=True)
    assert not none.any()
    assert not ((plain > 65) & (plain < 500)).any()  # without a lesion nothing lies between brain and bone


def test_png_set_has_labels_csv_both_classes_and_every_format(tmp_path):
    out = write_phantom_png_set(tmp_path / "a", n=10, seed=4, size_range=(48, 64))
    assert out == tmp_path / "a"
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:03d}.png" for i in range(10)]
    assert (out / "labels.csv").read_text().splitlines()[0] == "id, hemorrhage"
    dataset = load_dataset(out)
    assert len(dataset) == 10 and dataset.class_names == ["0", "1"]
    assert sorted(np.bincount(dataset.labels).tolist()) == [5, 5]
    for i, f in enumerate(files):
        with Image.open(f) as img:
            assert 48 <= img.width <= 64 and img.width == img.height
            expected = PNG_FORMATS[i % len(PNG_FORMATS)]
            assert img.mode == expected or (expected == "I;16" and img.mode.startswith("I"))
            a = np.array(img)
        if img.mode == "RGB":
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
        if img.mode.startswith("I"):
            assert a.max() > 255 and (a % 257 == 0).all()  # 8-bit grey stretched over 16 bits


def test_png_set_is_deterministic(tmp_path):
    a = write_phantom_png_set(tmp_path / "a", n=5, seed=1, size_range=(40, 48))
    b = write_phantom_png_set(tmp_path / "b", n=5, seed=1, size_range=(40, 48))
    c = write_phantom_png_set(tmp_path / "c", n=5, seed=2, size_range=(40, 48))
    for name in ("000.png", "003.png", "labels.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "000.png").read_bytes() != (c / "000.png").read_bytes()
