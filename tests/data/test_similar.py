import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from smallct.data.cache import load_images
from smallct.data.similar import (combine_groups, DECODE_SIZE, near_duplicate_groups, plausible_cut, similar_groups,
                                  SCREEN_MARGIN, similar_pairs, similarity, STRICTEST_CUT)
from smallct.datasets.folder import load_dataset


def test_identical_and_shifted_copies_are_linked_distinct_images_are_not():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (4, 3, 64, 64), dtype=np.uint8)
    images = torch.from_numpy(np.concatenate([base, base[:1], np.roll(base[1:2], 1, axis=-1)]))
    corr = similarity(images)
    assert np.allclose(np.diag(corr), 1.0)
    groups, pairs = similar_groups(images, threshold=0.9)
    assert groups[0] == groups[4] and groups[1] != groups[0]
    assert len(set(groups[[0, 1, 2, 3]])) == 4
    assert (0, 4) in [(i, j) for i, j, _ in pairs]


def _dense_pairs(images, threshold):
    """The pairs as 0.3.0 found them: the full N x N matrix, its upper triangle, closest first."""
    corr = similarity(images)
    ii, jj = np.nonzero(np.triu(corr, 1) >= threshold)
    return sorted(((int(i), int(j), float(corr[i, j])) for i, j in zip(ii, jj)), key=lambda p: (-p[2], p[0], p[1]))


def test_pairs_found_block_by_block_equal_the_full_matrix(monkeypatch):
    # 37 images in blocks of 8: four full blocks and a ragged last one of 5. Noisy copies are planted within a block,
    # across a block boundary, from the first block into the last, and inside the last; their correlations spread
    # around the threshold. Mutants caught: a missed last block or cross-block tile (pairs missing), the diagonal
    # kept (an image paired with itself), float32 correlations kept (values off by ~1e-7), a pair screened in below the
    # threshold kept, a dense product.
    rng = np.random.default_rng(0)
    smooth = lambda a: np.clip(a.repeat(4, -1).repeat(4, -2), 0, 255).astype(np.uint8)  # noqa: E731  (32 px)
    raw = rng.normal(128, 50, (37, 3, 8, 8))
    for (i, j), noise in zip([(2, 5), (7, 8), (0, 36), (33, 35), (12, 20), (20, 27), (14, 30)],
                             [3, 6, 9, 12, 15, 18, 21]):
        raw[j] = raw[i] + rng.normal(0, noise, raw[i].shape)
    images = torch.from_numpy(smooth(raw))
    products = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append((a.shape, b.shape)) or matmul(a, b))
    just_above = float(similarity(images)[14, 30]) + SCREEN_MARGIN / 2  # (14, 30) screened in, then left out
    for threshold in (0.92, 0.8, just_above):
        expected = _dense_pairs(images, threshold)
        products.clear()
        found = similar_pairs(images, threshold, block=8)
        assert products and all(a[0] <= 8 and b[1] <= 8 for a, b in products)  # never N x N
        assert [p[:2] for p in found] == [p[:2] for p in expected]
        assert np.allclose([p[2] for p in found], [p[2] for p in expected], rtol=0, atol=1e-12)
        default = similar_pairs(images, threshold)  # one block, the default size: the same pairs
        assert [p[:2] for p in default] == [p[:2] for p in found]
        assert np.allclose([p[2] for p in default], [p[2] for p in found], rtol=0, atol=1e-12)
        if threshold == 0.8:
            assert {(0, 36), (33, 35), (7, 8), (14, 30)} <= {p[:2] for p in found} and 4 <= len(expected) < 37
    assert (14, 30) not in {p[:2] for p in found}


def test_head_ct_pairs_are_those_of_the_expected_folds(head_ct_dir):
    # the 49 pairs, with their rounded correlations, that tests/expected/cv_head_ct.folds.json records
    import json
    from pathlib import Path
    expected = json.loads((Path(__file__).parents[1] / "expected" / "cv_head_ct.folds.json").read_text())
    ds = load_dataset(head_ct_dir)
    found = near_duplicate_groups(ds, log=lambda *a: None)
    assert found.record(ds.ids) == expected["similar_images"] and len(found.pairs) == 49


def test_combine_groups_joins_patients_and_similarity():
    patients = np.array(["a", "a", "b", "c", "d"])
    similar = np.array([0, 1, 2, 2, 3])
    g = combine_groups(patients, similar)
    assert g[0] == g[1] and g[2] == g[3] and len(set(g)) == 3


def test_known_duplicates_of_the_real_head_ct_set_are_found(head_ct_dir):
    ds = load_dataset(head_ct_dir)
    messages = []
    found = near_duplicate_groups(ds, log=messages.append)  # what smallct.cv uses, at any --img-size
    groups, pairs = found.groups, found.pairs
    assert messages and messages[0].startswith(f"found {len(pairs)} pairs") and len(pairs) == 49
    assert found.cut_above is None and found.unit == "near-duplicate groups"  # no implausible set on the real set
    name = {i: p.name for i, p in enumerate(ds.files)}
    linked = {(name[i], name[j]) for i, j, _ in pairs}
    # the same slice saved twice (identical, or at two sizes)
    for a, b in [("188.png", "189.png"), ("005.png", "058.png"), ("004.png", "057.png"), ("011.png", "061.png")]:
        assert (a, b) in linked
    assert np.bincount(groups).max() <= 12  # groups stay small: a chain of one patient's slices at most


def test_a_chain_is_cut_at_the_first_link_that_makes_a_set_implausible():
    owner = np.arange(40)  # images on their own: at most max(10% of 40, 3) = 4 in one set
    chain = [(i, i + 1, 0.99 - 0.01 * i) for i in range(6)]  # 0-1-2-...-6, links weakening along the chain
    cut, largest = plausible_cut(owner, chain + [(20, 21, 0.95)])
    assert cut == pytest.approx(0.96) and largest == 7  # the 4th link (0.96) would join a 5th image
    assert plausible_cut(owner, [(20, 21, 0.95), (22, 23, 0.94)]) == (None, 2)
    # links inside one owner (a patient's own slices) are not counted: 7 slices of one patient are one set
    patients = np.array([0] * 7 + list(range(1, 34)))
    assert plausible_cut(patients, chain) == (None, 1)


def _write(folder, images):
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    (folder / "labels.csv").write_text("id,label\n" + "".join(f"{i:03d},{i % 2}\n" for i in range(len(images))))
    return load_dataset(folder)


def test_an_implausible_set_is_cut_stricter_or_stops_but_never_drops_grouping(tmp_path):
    rng = np.random.default_rng(0)
    smooth = lambda a: np.clip(a.repeat(8, 0).repeat(8, 1), 0, 255).astype(np.uint8)  # noqa: E731  (128 px blocks)
    distinct = [smooth(rng.normal(128, 60, (16, 16, 3))) for _ in range(30)]
    base = rng.normal(128, 60, (16, 16, 3))
    # 8 variations of one picture (correlated about 0.93-0.97 with each other: implausible as one set of 38)
    # and one exact copy of image 0: the copy must stay linked after the cut
    similar = [smooth(base + rng.normal(0, s, base.shape)) for s in np.linspace(8, 14, 8)]
    ds = _write(tmp_path / "a", distinct + similar + [distinct[0]])
    messages = []
    found = near_duplicate_groups(ds, log=messages.append)
    assert found.cut_above is not None and found.threshold == 0.92 and "links cut above" in found.note
    assert "links cut above" in messages[0] and "--group-similar" in messages[0]
    assert np.bincount(found.groups).max() <= 4 and found.groups[0] == found.groups[38]  # the copy: still linked
    assert found.record(ds.ids)["cut_above"] == found.cut_above
    # the same picture 12 times over (tiny noise): cutting would split copies of one slice, so it stops
    copies = [smooth(base + rng.normal(0, 1, base.shape)) for _ in range(12)]
    same = _write(tmp_path / "b", distinct[:20] + copies)
    with pytest.raises(ValueError, match=rf"12 of 32 images form one linked set .*{STRICTEST_CUT}.*--group-similar 0"):
        near_duplicate_groups(same, log=lambda *a: None)
    off = near_duplicate_groups(same, threshold=None)  # the user's knowing choice
    assert off.groups is None and off.pairs == [] and off.unit == "images" and "not looked for" in off.note


def test_phantom_slices_vary_like_real_ones_and_need_no_escape(phantom_dir):
    ds = load_dataset(phantom_dir)
    messages = []
    found = near_duplicate_groups(ds, log=messages.append)
    assert found.cut_above is None and len(found.pairs) <= 2 and not any("cut" in m for m in messages)


def test_groups_are_the_thumbnail_groups_joined_with_patients(head_ct_dir):
    ds = load_dataset(head_ct_dir)
    thumbs = load_images(ds.files, DECODE_SIZE, progress=False)
    expected, _ = similar_groups(thumbs)
    groups = near_duplicate_groups(ds, log=lambda *a: None).groups
    same = expected[:, None] == expected[None, :]
    assert np.array_equal(same, groups[:, None] == groups[None, :])
    # with patients known, a patient's images and a near-duplicate pair are both kept together
    patients = np.array([f"p{i // 2}" for i in range(len(ds))])  # 000+001, 002+003, ... as one patient each
    found = near_duplicate_groups(dataclasses.replace(ds, groups=patients), log=lambda *a: None)
    joined = found.groups
    together = same | (patients[:, None] == patients[None, :])
    assert (joined[:, None] == joined[None, :])[together].all() and found.unit == "patient groups"
    assert joined[0] == joined[1] and joined[188] == joined[189] and len(set(joined)) < len(set(groups))
