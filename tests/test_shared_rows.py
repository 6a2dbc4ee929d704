"""The compiled kernels of the shared-row strategy: each distinct row of an instance once."""
from __future__ import annotations

import numpy as np
import pytest

from explainers.kernelshap.coalitions import coalition_keys
from explainers.kernelshap.shared_rows import (
    PatternCache,
    PatternSums,
    accumulate,
    build_shared_rows,
    compiled_versions,
    shared_row_count,
)


def _problem(n_players: int = 5, n_coalitions: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    column_player = np.repeat(np.arange(n_players), 2)
    background = rng.integers(0, 2, size=(30, len(column_player))).astype(float)
    x = background[3].copy()
    x[::3] = 5.0
    background[0, 1] = -0.0  # a signed zero differs from x's 0.0 bitwise: x's must be taken
    x[1] = 0.0
    background[1, 2] = np.finfo(float).tiny / 4  # a subnormal must survive the select
    masks = rng.random((n_coalitions, n_players)) < 0.5
    return background, x, column_player, masks


def _build_all(background, x, column_player, masks, max_rows=10**6, cache=None):
    """Every chunk of the instance: ``(first, stop, rows, index, layout, n_patterns)``."""
    keys = coalition_keys(masks)
    n_players = int(column_player.max()) + 1
    out = np.empty((max(max_rows, len(masks)) + 1, background.shape[1]))
    index = np.empty((len(background), len(masks)), dtype=np.int32)
    layout = np.empty((4, len(background)), dtype=np.int64)
    chunks, first = [], 0
    while first < len(background):
        stop, n_rows, n_patterns = build_shared_rows(background, x, column_player, keys, n_players, first, max_rows,
                                                     len(background), out, index, layout, cache)
        chunks.append((first, stop, out[:n_rows].copy(), index[:n_patterns].copy(), layout[:, : stop - first].copy(),
                       n_patterns))
        first = stop
    return chunks


@pytest.mark.parametrize("n_players, n_coalitions", [(5, 9), (5, 31), (20, 12)], ids=["few", "all", "sparse"])
def test_every_coalition_reads_its_own_synthetic_row_bit_for_bit(n_players, n_coalitions):
    """Dense numbering (2**|P_b| small) and sorted numbering (20 players, 12 coalitions) alike."""
    background, x, column_player, masks = _problem(n_players, n_coalitions)
    background[5] = background[4]  # a pattern seen twice
    total_rows = 0
    for first, stop, rows, index, layout, n_patterns in _build_all(background, x, column_player, masks):
        total_rows += len(rows)
        pattern_of, row_base, pattern_rows, pattern_keys = layout
        assert n_patterns == len(np.unique(pattern_of)) and np.array_equal(np.unique(pattern_of), np.arange(n_patterns))
        for i, b in enumerate(range(first, stop)):
            expected = np.where(masks[:, column_player], x, background[b])
            read = rows[row_base[i] + index[pattern_of[i]]]
            assert np.array_equal(read.view(np.int64), expected.view(np.int64))
            # no row twice within a background row's block, and every one of them read
            block = rows[row_base[i]: row_base[i] + pattern_rows[pattern_of[i]]]
            assert len(np.unique(block.view(np.int64), axis=0)) == len(block)
            assert set(index[pattern_of[i]]) == set(range(len(block)))
    assert total_rows == shared_row_count(background, x, column_player, coalition_keys(masks))


def test_a_chunk_holds_whole_background_rows_within_its_bound():
    background, x, column_player, masks = _problem(5, 31)
    chunks = _build_all(background, x, column_player, masks, max_rows=40)
    assert len(chunks) > 1 and chunks[-1][1] == len(background)
    for first, stop, rows, *_ in chunks:
        assert len(rows) <= 40 or stop == first + 1


def test_totals_are_summed_in_background_order_across_patterns():
    """Background rows 0 and 2 of pattern 0, row 1 of pattern 1: the sum goes 0, 1, 2, not by pattern."""
    outputs = np.array([[1e16], [1.0], [-1e16]])
    index = np.zeros((2, 1), dtype=np.int32)
    layout = np.array([[0, 1, 0], [0, 1, 2], [1, 1, 0], [5, 6, 0]])
    totals = np.zeros((1, 1))
    accumulate(outputs, index, layout, 3, 2, totals)
    assert totals[0, 0] == (1e16 + 1.0) - 1e16  # 0.0: in order; 1.0 in another order
    with pytest.raises(IndexError, match="outside the chunk's outputs"):
        accumulate(outputs[:2], index, layout, 3, 2, np.zeros((1, 1)))
    with pytest.raises(IndexError, match="outside its pattern's rows"):
        accumulate(outputs, index + 1, layout, 3, 2, np.zeros((1, 1)))


def test_bad_arguments_are_errors():
    background, x, column_player, masks = _problem()
    keys = coalition_keys(masks)
    out, index = np.empty((100, background.shape[1])), np.empty((30, len(keys)), dtype=np.int32)
    layout = np.empty((4, 30), dtype=np.int64)
    with pytest.raises(ValueError, match="takes 1 to 62 players"):
        build_shared_rows(background, x, column_player, keys, 63, 0, 50, 30, out, index, layout)
    with pytest.raises(ValueError, match="bitmasks of 5 players"):
        build_shared_rows(background, x, column_player, keys | 2**7, 5, 0, 50, 30, out, index, layout)
    with pytest.raises(ValueError, match="cannot hold"):
        build_shared_rows(background, x, column_player, keys, 5, 0, 500, 30, out, index, layout)
    with pytest.raises(ValueError, match="writable C-contiguous int32"):
        build_shared_rows(background, x, column_player, keys, 5, 0, 50, 30, out, index.astype(np.int64), layout)
    with pytest.raises(ValueError, match="cannot hold 30 background rows"):
        build_shared_rows(background, x, column_player, keys, 5, 0, 50, 30, out, index, layout[:, :10].copy())


def test_one_compiled_version_per_kernel_whatever_the_input_types():
    background, x, column_player, masks = _problem()
    _build_all(background, x, column_player, masks)
    _build_all(background[:, :].astype(np.float32).astype(np.float64), x, column_player.astype(np.int32), masks)
    accumulate(np.zeros((2, 1), dtype=np.float32), np.zeros((1, 1), dtype=np.int32),
               np.array([[0], [0], [1], [3]], dtype=np.int32), 1, 1, np.zeros((1, 1)))
    for max_rows in (10**6, 40):  # one chunk, several
        _pattern_totals(_build_all(background, x, column_player, masks, max_rows), len(masks), len(background))
    assert compiled_versions() == {"build_shared_rows": 1, "accumulate": 1, "add_to_patterns": 1, "fold_patterns": 1}


def _row_wise_outputs(rows: np.ndarray) -> np.ndarray:
    """A model whose output for a row depends on that row only: ``(R, 2)``."""
    return np.stack([rows @ np.linspace(-1.3, 0.7, rows.shape[1]), np.sin(rows).sum(axis=1)], axis=1)


def _pattern_totals(chunks, n_coalitions: int, n_background: int) -> np.ndarray:
    sums = PatternSums(n_background, 2, 8)  # room for 8 rows: grown as the patterns need
    sums.start(n_coalitions)
    for first, stop, rows, index, layout, n_patterns in chunks:
        sums.add(_row_wise_outputs(rows), index, layout, stop - first, n_patterns,
                 whole=first == 0 and stop == n_background)
    totals = np.zeros((n_coalitions, 2))
    sums.fold(totals)
    return totals


@pytest.mark.parametrize("n_players, n_coalitions", [(5, 31), (20, 12)], ids=["all", "sparse"])
def test_pattern_sums_do_not_depend_on_where_the_chunks_end(n_players, n_coalitions):
    """One chunk or many (each a few background rows), the same bits; and the totals of the
    background-order sum, to rounding."""
    background, x, column_player, masks = _problem(n_players, n_coalitions)
    background[7] = background[2]  # a pattern that recurs in a later chunk
    whole = _build_all(background, x, column_player, masks)
    assert len(whole) == 1
    pieces = _build_all(background, x, column_player, masks, max_rows=max(40, n_coalitions))
    assert len(pieces) > 2
    by_pattern = _pattern_totals(whole, len(masks), len(background))
    assert np.array_equal(_pattern_totals(pieces, len(masks), len(background)), by_pattern)
    in_order = np.zeros((len(masks), 2))
    for first, stop, rows, index, layout, n_patterns in pieces:
        accumulate(_row_wise_outputs(rows), index, layout, stop - first, n_patterns, in_order)
    np.testing.assert_allclose(by_pattern, in_order, rtol=1e-13, atol=1e-12)
    expected = sum(_row_wise_outputs(np.where(masks[:, column_player], x, b)) for b in background)
    np.testing.assert_allclose(by_pattern, expected, rtol=1e-13, atol=1e-12)


def test_pattern_sums_add_a_pattern_up_before_the_next():
    """Background rows 0 and 2 of pattern 0, row 1 of pattern 1: pattern 0's two rows are summed
    first (1e16 - 1e16), then pattern 1's, so the total is 1.0 (0.0 in background order)."""
    outputs = np.array([[1e16], [1.0], [-1e16]])
    index = np.zeros((2, 1), dtype=np.int32)
    layout = np.array([[0, 1, 0], [0, 1, 2], [1, 1, 0], [5, 6, 0]])
    sums = PatternSums(3, 1, 3)
    sums.start(1)
    sums.add(outputs, index, layout, 3, 2, whole=True)
    totals = np.zeros((1, 1))
    sums.fold(totals)
    assert totals[0, 0] == 1.0
    bad = PatternSums(3, 1, 3)
    bad.start(1)
    bad.add(outputs, index + 1, layout, 3, 2, whole=True)
    with pytest.raises(IndexError, match="outside its pattern's rows"):
        bad.fold(np.zeros((1, 1)))


def test_no_coalitions_give_no_rows():
    """With reuse every coalition of an instance can be found: then no row may be written."""
    background, x, column_player, masks = _problem(20, 12)
    out, index = np.full((13, background.shape[1]), np.nan), np.empty((30, 0), dtype=np.int32)
    stop, n_rows, _ = build_shared_rows(background, x, column_player, np.empty(0, dtype=np.int64), 20, 0, 12, 30,
                                        out, index, np.empty((4, 30), dtype=np.int64))
    assert (stop, n_rows) == (30, 0)


@pytest.mark.parametrize("max_rows", [10**6, 40], ids=["one-chunk", "chunks"])
def test_patterns_met_before_are_taken_from_the_cache_bit_for_bit(max_rows):
    """Instances with the same coalitions meet many of the same patterns: the cache gives what
    working them out gives, the same rows in the same places and the same index."""
    background, x, column_player, masks = _problem(5, 31)
    cache = PatternCache(5, len(masks))
    for instance in range(4):
        x_i = x.copy()
        x_i[instance] = 7.0  # another instance: some patterns change, most recur
        plain = _build_all(background, x_i, column_player, masks, max_rows)
        before = cache.patterns
        cached = _build_all(background, x_i, column_player, masks, max_rows, cache)
        assert len(plain) == len(cached)
        for a, b in zip(plain, cached):
            assert a[:2] == b[:2] and a[5] == b[5]
            for left, right in zip(a[2:5], b[2:5]):
                assert np.array_equal(left, right)
        assert cache.patterns >= before and (instance == 0 or cache.patterns < before + len(background))
    assert 0 < cache.patterns < 2**5
    with pytest.raises(ValueError, match="pattern cache is for 31 coalitions of 5 players"):
        _build_all(background, x, column_player, masks[:9], max_rows, cache)
    with pytest.raises(ValueError, match="takes 1 to"):
        PatternCache(63, 4)
