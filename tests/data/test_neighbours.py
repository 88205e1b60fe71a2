"""Tests of smallct.data.neighbours: steps stop at series ends and gaps, chains, smoothing never crosses a gap, and
the links among a subset of rows."""

import numpy as np
import pytest

from smallct.data.neighbours import Neighbours

# rows 0-1-2 one series, 3 alone (a gap on both sides), 4-5 another series; listed out of order on purpose:
#   series A in rows 2, 0, 1 (series order 2 -> 0 -> 1), a gap before row 3, series B rows 5 -> 4
PREV = np.array([2, 0, 2, 3, 5, 5])
NEXT = np.array([1, 1, 0, 3, 4, 4])


def links() -> Neighbours:
    return Neighbours(PREV, NEXT)


def test_steps_stop_at_ends_and_gaps():
    n = links()
    assert n.step(1).tolist() == [1, 1, 0, 3, 4, 4]
    assert n.step(2).tolist() == [1, 1, 1, 3, 4, 4]  # from row 2: 2 -> 0 -> 1
    assert n.step(-2).tolist() == [2, 2, 2, 3, 5, 5]
    assert n.offsets(1).tolist() == [[2, 0, 1], [0, 1, 1], [2, 2, 0], [3, 3, 3], [5, 4, 4], [5, 5, 4]]


def test_chains_in_series_order():
    assert [c.tolist() for c in links().chains()] == [[2, 0, 1], [3], [5, 4]]
    assert links().chain_of().tolist() == [0, 0, 0, 1, 2, 2]


def test_smooth_is_a_centred_mean_within_each_chain():
    v = np.array([[10.0], [20.0], [0.0], [100.0], [7.0], [1.0]])
    out = links().smooth(v, 3)
    # chain 2 -> 0 -> 1 holds 0, 10, 20: ends average the two they hold; row 3 is alone (never mixed with 20 or 1)
    assert out[:, 0].tolist() == [10.0, 15.0, 5.0, 100.0, 4.0, 4.0]
    assert np.array_equal(links().smooth(v, 1), v)
    wide = links().smooth(v[:, 0], 5)
    assert wide[0] == pytest.approx(10.0) and wide[3] == 100.0
    with pytest.raises(ValueError, match="odd"):
        links().smooth(v, 2)


def test_take_renumbers_and_cuts_links_to_rows_left_out():
    sub = links().take([1, 0, 4])  # row 2 (the start of series A) and row 5 left out
    assert sub.prev.tolist() == [1, 1, 2] and sub.next.tolist() == [0, 0, 2]
    assert [c.tolist() for c in sub.chains()] == [[1, 0], [2]]
    repeated = links().take([0, 0, 1])  # a row taken twice has no single place: it stands alone
    assert repeated.prev.tolist() == [0, 1, 2] and repeated.next.tolist() == [0, 1, 2]


@pytest.mark.parametrize("prev, nxt, message", [
    ([0, 5], [1, 1], "outside rows"),
    ([0, 0, 2], [1, 2, 2], "do not link back"),  # next of 1 is 2, but prev of 2 is itself
    ([1, 0], [1, 0], "loop"),
])
def test_bad_links_are_named(prev, nxt, message):
    with pytest.raises(ValueError, match=message):
        Neighbours(np.array(prev), np.array(nxt)).chains()


def test_alone():
    assert [c.tolist() for c in Neighbours.alone(3).chains()] == [[0], [1], [2]]


def test_smooth_refuses_values_of_another_length():
    # mutant caught: no check, so the rows past the links came back as np.empty's leftovers
    with pytest.raises(ValueError, match="7 rows of probabilities for 6 linked slices"):
        links().smooth(np.zeros((7, 6)), 3)
