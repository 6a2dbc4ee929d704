"""The compiled loops of the distinct-row strategy, against NumPy, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from explainers.kernelshap.distinct_rows import DistinctRows, RowSet, take
from explainers.kernelshap.row_kernels import build_distinct_rows, compiled_versions, weighted_means


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_bg, n_players = 30, 5
    column_player = np.array([0, 0, 1, 2, 2, 2, 3, 4], dtype=np.intp)
    background = np.round(rng.normal(size=(n_bg, len(column_player))), 0)
    background[0, 1] = -0.0  # a signed zero must keep its sign
    background[1, 3] = np.finfo(float).tiny / 4  # a subnormal must survive the select
    x = rng.normal(size=len(column_player))
    masks = rng.random((9, n_players)) < 0.5
    rows = DistinctRows(background, column_player, max_cache_bytes=2**20).of(masks)
    return background, x, column_player, masks, rows


def test_rows_are_x_on_held_columns_and_the_representative_elsewhere_bit_for_bit():
    background, x, column_player, masks, rows = _problem()
    out = np.full((rows.n_rows + 3, background.shape[1]), np.nan)
    first, stop = 2, 7
    n = build_distinct_rows(background, x, column_player, masks, rows, first, stop, out)
    lo, hi = rows.starts[first], rows.starts[stop]
    assert n == hi - lo
    coalition = np.repeat(np.arange(first, stop), np.diff(rows.starts[first : stop + 1]))
    held = masks[coalition][:, column_player]
    expected = np.where(held, x, background[rows.rows[lo:hi]])
    assert np.array_equal(out[:n].view(np.uint64), expected.view(np.uint64))
    assert np.isnan(out[n:]).all()  # nothing written past the chunk


def test_weighted_means_weight_each_row_by_its_count_in_row_order():
    rng = np.random.default_rng(1)
    starts = np.array([0, 3, 3 + 5, 3 + 5 + 1, 12], dtype=np.int64)
    counts = rng.integers(1, 9, 12).astype(np.float64)
    outputs = rng.random((12, 2))
    values = np.empty((3, 2))
    weighted_means(outputs[3:], RowSet.laid_out(np.arange(12), counts, starts), 1, 4, 40, values)
    for s in range(1, 4):
        for o in range(2):
            total = 0.0
            for k in range(starts[s], starts[s + 1]):
                total += counts[k] * outputs[k, o]
            assert values[s - 1, o] == total / 40


def test_inputs_read_only_or_not_share_one_compiled_version():
    background, x, column_player, masks, rows = _problem(2)
    out = np.empty((rows.n_rows, background.shape[1]))
    build_distinct_rows(background, x, column_player, masks, rows, 0, len(rows), out)
    frozen = [a.copy() for a in (background, x, masks)]
    for a in frozen:
        a.flags.writeable = False
    build_distinct_rows(frozen[0], frozen[1], column_player, frozen[2], rows, 0, len(rows), out)
    build_distinct_rows(background[:, :], x.astype(np.float32), column_player.astype(np.int32), masks,
                        rows, 0, len(rows), out)
    assert compiled_versions()["build_distinct_rows"] == 1


def test_an_output_that_cannot_hold_the_rows_is_an_error():
    background, x, column_player, masks, rows = _problem()
    with pytest.raises(ValueError, match="cannot hold the rows"):
        build_distinct_rows(background, x, column_player, masks, rows, 0, len(rows),
                            np.empty((rows.n_rows - 1, background.shape[1])))
    with pytest.raises(ValueError, match="writable C-contiguous"):
        build_distinct_rows(background, x, column_player, masks, rows, 0, len(rows),
                            np.empty((background.shape[1], rows.n_rows)).T)
    with pytest.raises(ValueError, match="do not fit"):
        weighted_means(np.zeros((2, 1)), rows, 0, 2, 30, np.empty((2, 1)))


def test_rows_read_through_a_taken_subset_are_those_of_a_copy_laid_out_end_to_end():
    background, x, column_player, masks, rows = _problem(3)
    picked = np.array([6, 0, 6, 3])  # out of order, one twice: the pools are read where ``begin`` says
    subset = take(rows, picked)
    copy = RowSet.laid_out(subset.rows.copy(), subset.counts.copy(), subset.starts.copy())
    built = []
    for row_set in (subset, copy):
        out = np.empty((row_set.n_rows, background.shape[1]))
        build_distinct_rows(background, x, column_player, masks[picked], row_set, 0, len(picked), out)
        values = np.empty((len(picked), 1))
        weighted_means(out[:, :1], row_set, 0, len(picked), len(background), values)
        built.append((out, values))
    assert np.array_equal(built[0][0], built[1][0]) and np.array_equal(built[0][1], built[1][1])


def test_a_row_set_that_reaches_outside_its_pools_is_refused():
    background, x, column_player, masks, rows = _problem()
    broken = RowSet(rows.pool_rows[:3], rows.pool_counts, rows.begin, rows.starts)
    with pytest.raises(ValueError, match="outside its pools"):
        build_distinct_rows(background, x, column_player, masks, broken, 0, len(rows),
                            np.empty((rows.n_rows, background.shape[1])))
    with pytest.raises(ValueError, match="not within"):
        build_distinct_rows(background, x, column_player, masks, rows, 0, len(rows) + 1,
                            np.empty((rows.n_rows, background.shape[1])))
