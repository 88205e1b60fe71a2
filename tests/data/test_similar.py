import dataclasses

import numpy as np
import torch

from smallct.data.cache import load_images
from smallct.data.similar import combine_groups, DECODE_SIZE, near_duplicate_groups, similar_groups, similarity
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


def test_combine_groups_joins_patients_and_similarity():
    patients = np.array(["a", "a", "b", "c", "d"])
    similar = np.array([0, 1, 2, 2, 3])
    g = combine_groups(patients, similar)
    assert g[0] == g[1] and g[2] == g[3] and len(set(g)) == 3


def test_known_duplicates_of_the_real_head_ct_set_are_found(head_ct_dir):
    ds = load_dataset(head_ct_dir)
    messages = []
    groups, pairs = near_duplicate_groups(ds, log=messages.append)  # what smallct.cv uses, at any --img-size
    assert messages and messages[0].startswith(f"found {len(pairs)} pairs")
    name = {i: p.name for i, p in enumerate(ds.files)}
    found = {(name[i], name[j]) for i, j, _ in pairs}
    # the same slice saved twice (identical, or at two sizes)
    for a, b in [("188.png", "189.png"), ("005.png", "058.png"), ("004.png", "057.png"), ("011.png", "061.png")]:
        assert (a, b) in found
    assert np.bincount(groups).max() <= 12  # groups stay small: a chain of one patient's slices at most


def test_uniformly_similar_images_are_not_grouped_and_zero_turns_grouping_off(phantom_dir):
    ds = load_dataset(phantom_dir)
    messages = []
    groups, pairs = near_duplicate_groups(ds, log=messages.append)
    assert groups is ds.groups and pairs == [] and "skipped" in messages[0]  # synthetic heads all look alike
    assert near_duplicate_groups(ds, threshold=None, log=messages.append) == (ds.groups, []) and len(messages) == 1


def test_groups_are_the_thumbnail_groups_joined_with_patients(head_ct_dir):
    ds = load_dataset(head_ct_dir)
    thumbs = load_images(ds.files, DECODE_SIZE, progress=False)
    expected, _ = similar_groups(thumbs)
    groups, _ = near_duplicate_groups(ds, log=lambda *a: None)
    same = expected[:, None] == expected[None, :]
    assert np.array_equal(same, groups[:, None] == groups[None, :])
    # with patients known, a patient's images and a near-duplicate pair are both kept together
    patients = np.array([f"p{i // 2}" for i in range(len(ds))])  # 000+001, 002+003, ... as one patient each
    joined, _ = near_duplicate_groups(dataclasses.replace(ds, groups=patients), log=lambda *a: None)
    together = same | (patients[:, None] == patients[None, :])
    assert (joined[:, None] == joined[None, :])[together].all()
    assert joined[0] == joined[1] and joined[188] == joined[189] and len(set(joined)) < len(set(groups))
