import numpy as np
import pytest

from smallct.datasets.phantom import head_phantom_hu
from smallct.datasets.rsna import LABELS, SUBTYPES
from smallct.datasets.synthetic_lesions import (draw_lesions, head_geometry, Lesion, plan_lesions, slice_labels,
                                                SUBTYPE_SHARE)


def _plans(seed, n_series=500, n_slices=40, **kw):
    rng = np.random.default_rng(seed)
    return [plan_lesions(rng, n_slices, **kw) for _ in range(n_series)]


def test_plans_are_deterministic_and_runs_contiguous_within_span():
    assert _plans(3, 50) == _plans(3, 50)
    assert _plans(3, 50) != _plans(4, 50)
    lesions = [lesion for plan in _plans(0, 300) for lesion in plan]
    assert {lesion.length for lesion in lesions} == set(range(3, 9))  # every length 3-8, no other
    assert all(0 <= lesion.start and lesion.start + lesion.length <= 40 for lesion in lesions)
    y = slice_labels([Lesion("subdural", 5, 4, 0.0, (0, 0), 1.0)], 12)[:, LABELS.index("subdural")]
    assert y.tolist() == [0] * 5 + [1] * 4 + [0] * 3  # one contiguous run, in slice order
    short = [lesion for plan in _plans(0, 100, n_slices=4) for lesion in plan]
    assert short and max(lesion.length for lesion in short) == 4  # clipped to the series
    with pytest.raises(ValueError, match="span"):
        plan_lesions(np.random.default_rng(0), 40, span=(5, 2))


def test_label_rates_near_rsna_and_any_is_the_union():
    # RSNA 2019: any 14.4% of slices; subdural 6.3, intraparenchymal 4.8, subarachnoid 4.7, intraventricular 3.5,
    # epidural 0.4 (mutants: a rate or share off by 2x, any as a separate draw, no co-occurring subtypes)
    for seed in (0, 1):
        y = np.concatenate([slice_labels(plan, 40) for plan in _plans(seed)])
        rates = dict(zip(LABELS, y.mean(axis=0)))
        assert 0.11 < rates["any"] < 0.17
        assert (y[:, 0] == y[:, 1:].max(axis=1)).all()
        assert 0.03 < rates["subdural"] < 0.08 and rates["epidural"] < 0.015
        assert all(0.02 < rates[t] < 0.07 for t in ("intraparenchymal", "intraventricular", "subarachnoid"))
        several = (y[:, 1:].sum(axis=1) > 1).mean()
        assert 0.02 < several < rates["any"] / 2  # some slices carry several subtypes
    assert abs(sum(SUBTYPE_SHARE.values()) - 1) < 1e-9 and tuple(SUBTYPE_SHARE) == SUBTYPES


@pytest.fixture(scope="module")
def head():
    base = head_phantom_hu(64, rng=np.random.default_rng(5)).astype(np.float64)
    return base, head_geometry(base)


def _mask(head, subtype, t=2, length=5, angle=0.5):
    base, g = head
    lesion = Lesion(subtype, 0, length, angle, (0.2, -0.2), 1.0)
    return draw_lesions(base.copy(), g, [lesion], t, 10.0) != base


def test_subtypes_differ_in_place_and_shape(head):
    # mutant: every subtype drawn as the same blob (the six labels could not be told apart)
    base, g = head
    masks = {t: _mask(head, t) for t in SUBTYPES}
    assert all(m.sum() >= 4 for m in masks.values())
    depth = {t: np.median(g.depth[m]) for t, m in masks.items()}
    spread = {t: np.ptp(np.unwrap(np.sort(g.theta[m]))) for t, m in masks.items()}
    for outer in ("epidural", "subdural", "subarachnoid"):  # against the skull
        assert depth[outer] < 6 < depth["intraparenchymal"] and depth[outer] < depth["intraventricular"]
    assert spread["subdural"] > 1.5 * spread["epidural"]  # a long crescent against a short lens
    assert g.depth[masks["epidural"]].max() > g.depth[masks["subdural"]].max()  # the lens is thicker
    assert np.hypot(g.yy[masks["intraventricular"]] - g.cy, g.xx[masks["intraventricular"]] - g.cx).max() \
        < 0.4 * g.radius  # central
    assert (base[masks["epidural"] | masks["subdural"]] < 300).all()  # never on the bone


def test_faint_largest_mid_run_and_absent_outside_it(head):
    base, g = head
    lesion = Lesion("intraparenchymal", 3, 5, 0.5, (0.1, 0.1), 1.0)
    slices = [draw_lesions(base.copy(), g, [lesion], s, 6.0) - base for s in range(10)]
    sizes = [int((d != 0).sum()) for d in slices]
    assert sizes[:3] == [0, 0, 0] and sizes[8:] == [0, 0]
    assert sizes[5] > sizes[3] > 0 and sizes[5] > sizes[7] > 0  # largest mid-run
    assert np.allclose(slices[5][slices[5] != 0], 6.0)  # exactly ``contrast`` HU above the slice
