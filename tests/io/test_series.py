"""Slices in series order along the normal, their neighbours, and one problem line per series."""

import numpy as np
import pandas as pd
import pytest

from smallct.datasets.synthetic_dicom import tilted_geometry
from smallct.io.series import ORIENTATION, POSITION, order_slices, slice_position

AXIAL = [1, 0, 0, 0, 1, 0]


def _table(rows):
    """rows: (id, series, position (3,), orientation (6,)) -> a header table."""
    return pd.DataFrame([{"id": i, "series": s, **dict(zip(POSITION, p)), **dict(zip(ORIENTATION, o))}
                         for i, s, p, o in rows])


def _axial(series, zs, ids):
    return [(i, series, [-125.0, -125.0, z], AXIAL) for i, z in zip(ids, zs)]


def _ordered_ids(table, result):
    return table["id"].to_numpy()[result.order].tolist()


def test_slice_position_is_along_the_normal():
    assert slice_position([[3.0, 4.0, 12.5]], [AXIAL]).tolist() == [12.5]  # untilted: ImagePositionPatient[2]
    orientation, positions = tilted_geometry(20, 0.0, 4)
    along = slice_position(positions, np.tile(orientation, (4, 1)))
    np.testing.assert_allclose(np.diff(along), 5.0, atol=1e-3)
    assert np.isnan(slice_position([[0, 0, 1]], [[1, 0, 0, 1, 0, 0]]))  # parallel cosines: no normal
    assert np.isnan(slice_position([[0, 0, np.nan]], [AXIAL]))


def test_a_tilted_series_is_ordered_along_its_normal_not_by_z_nor_by_name():
    orientation, positions = tilted_geometry(20, 10.0, 6)
    ids = ["ID_f3", "ID_0a", "ID_9c", "ID_11", "ID_e7", "ID_5b"]  # slice order; names not in that order
    table = _table([(i, "S", p, orientation) for i, p in zip(ids, positions)]).sample(frac=1, random_state=0)
    # the construction matters: ImagePositionPatient[2] and the names give other orders
    assert table.sort_values("z")["id"].tolist() != ids and sorted(ids) != ids
    result = order_slices(table)
    assert _ordered_ids(table, result) == ids  # mutant caught: sorting by z (0.3.0) or by id
    np.testing.assert_allclose(np.diff(result.position), 5.0, atol=1e-3)
    assert result.prev.tolist() == [0, 0, 1, 2, 3, 4] and result.next.tolist() == [1, 2, 3, 4, 5, 5]
    assert result.problems == []


def test_a_gap_is_reported_and_not_crossed_by_neighbours():
    table = _table(_axial("S", [0, 5, 10, 20, 25, 30], ["ID_a", "ID_b", "ID_c", "ID_e", "ID_f", "ID_g"]))
    result = order_slices(table)
    # mutant caught: linking across the gap (ID_c's next would be ID_e)
    assert result.prev.tolist() == [0, 0, 1, 3, 3, 4] and result.next.tolist() == [1, 2, 2, 4, 5, 5]
    line, = result.problems
    assert line.startswith("series S: 6 slices; 1 gap over 1.5 x the median spacing 5 mm (10 mm between ID_c and ID_e)")
    # a spacing of 1.5 x the median exactly is no gap (mutant caught: >= instead of >)
    assert order_slices(_table(_axial("S", [0, 4, 8, 14, 18], list("abcde")))).problems == []


def test_duplicate_positions_are_ordered_by_id_whatever_the_input_order_and_reported():
    rows = _axial("S", [10, 0, 5, 5, 15], ["ID_d", "ID_a", "ID_x", "ID_b", "ID_e"])
    expected = ["ID_a", "ID_b", "ID_x", "ID_d", "ID_e"]
    for seed in range(4):
        table = _table(rows).sample(frac=1, random_state=seed)
        result = order_slices(table)
        assert _ordered_ids(table, result) == expected  # mutant caught: a tie left in input order
    assert result.next.tolist() == [1, 2, 3, 4, 4]  # duplicates stay neighbours; the spacing 0 is no gap
    line, = result.problems
    assert line == "series S: 5 slices; 1 duplicate position (ID_b = ID_x at 5 mm): ordered by id"


@pytest.mark.parametrize("damage", ["mixed", "missing_orientation", "missing_position"])
def test_a_series_that_cannot_be_ordered_keeps_id_order_and_self_neighbours(damage):
    rows = _axial("S", [10, 0, 5, 15], ["ID_a", "ID_b", "ID_c", "ID_d"]) + _axial("T", [1, 0], ["ID_y", "ID_x"])
    i, series, position, _ = rows[2]
    if damage == "mixed":
        rows[2] = (i, series, position, [1, 0, 0, 0, 0.94, 0.34])
    elif damage == "missing_orientation":
        rows[2] = (i, series, position, [np.nan] * 6)
    else:
        rows[2] = (i, series, [np.nan] * 3, AXIAL)
    table = _table(rows)
    result = order_slices(table)
    assert _ordered_ids(table, result) == ["ID_a", "ID_b", "ID_c", "ID_d", "ID_x", "ID_y"]  # S by id, T by position
    assert result.prev.tolist()[:4] == [0, 1, 2, 3] and result.next.tolist()[:4] == [0, 1, 2, 3]
    assert result.next.tolist()[4:] == [5, 5]
    line, = result.problems  # T is fine: no line
    what = "mixed ImageOrientationPatient (2 different)" if damage == "mixed" else \
        "1 without a usable ImagePositionPatient or ImageOrientationPatient (ID_c)"
    assert line == f"series S: 4 slices; {what}: kept in id order, each slice its own neighbour"


def test_series_ordered_by_keys_then_uid_and_one_line_per_series():
    rows = (_axial("B", [0, 5, 5, 20, 25], ["b0", "b1", "b2", "b3", "b4"])  # a duplicate and a gap
            + _axial("A", [3, 1], ["a1", "a0"]) + _axial(None, [0, 1], ["n0", "n1"]))
    table = _table(rows)
    table["patient"] = ["P2"] * 5 + ["P1"] * 2 + ["P0"] * 2
    result = order_slices(table, keys=("patient",))
    # by patient first (P1's A before P2's B), a slice without series uid last
    assert _ordered_ids(table, result) == ["a0", "a1", "b0", "b1", "b2", "b3", "b4", "n0", "n1"]
    assert len(result.problems) == 2  # mutant caught: a line per problem instead of per series
    b, none = result.problems
    assert b.startswith("series B: 5 slices; 1 gap") and "; 1 duplicate position (b1 = b2 at 5 mm)" in b
    assert none.startswith("series (no SeriesInstanceUID): 2 slices; no SeriesInstanceUID: kept in id order")
    assert order_slices(table.iloc[:0]).order.tolist() == []
