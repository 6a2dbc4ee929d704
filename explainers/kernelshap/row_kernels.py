"""Compiled loops of the distinct-row strategy: building the rows, and their weighted means.

In NumPy, building a coalition's distinct rows takes a gather of background rows and then one
masked assignment per player, and their weighted means a ``reduceat``: together several times
the cost of the model on a row for a cheap model (a logistic regression on the Adult data
spends about as long on a row as it takes to write it). Compiled with numba, each row is
written once, straight from the background and ``x`` with a bitwise select, and the sums run
in a fixed order, so the values are the same bits wherever the same engine runs them (numba's
default, without ``fastmath``, keeps the order of floating-point operations as written).

The functions compile on first use (a few seconds, once per machine: numba caches the machine
code next to this file, or in ``NUMBA_CACHE_DIR``); :func:`compile_kernels` does it ahead of
timing anything.
"""
from __future__ import annotations

import numba
import numpy as np

from explainers.kernelshap.distinct_rows import RowSet
from explainers.kernelshap.kernel_arguments import check_writable, read_only

_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_NONE = np.uint64(0)


@numba.njit(cache=True, nogil=True)
def _build_distinct_rows(
    background: np.ndarray, x: np.ndarray, column_player: np.ndarray, masks: np.ndarray,
    pool_rows: np.ndarray, begin: np.ndarray, starts: np.ndarray, first: int, stop: int, out: np.ndarray,
) -> int:
    """:func:`build_distinct_rows` on checked arguments (numba does not check bounds)."""
    n_cols = background.shape[1]
    lo = starts[first]
    # a bitwise select of the two values (exactly one of them, but without a branch per element)
    background_bits = background.view(np.uint64)
    x_bits = x.view(np.uint64)
    out_bits = out.view(np.uint64)
    keep = np.empty(n_cols, dtype=np.uint64)
    x_held = np.empty(n_cols, dtype=np.uint64)
    for s in range(first, stop):
        for j in range(n_cols):
            keep[j] = _NONE if masks[s, column_player[j]] else _ALL
            x_held[j] = x_bits[j] & ~keep[j]
        # locals, so that the compiler need not read them again after every store
        read, written, n_rows = begin[s], starts[s] - lo, starts[s + 1] - starts[s]
        for t in range(n_rows):
            row = pool_rows[read + t]
            r = written + t
            for j in range(n_cols):
                out_bits[r, j] = (background_bits[row, j] & keep[j]) | x_held[j]
    return starts[stop] - lo


@numba.njit(cache=True, nogil=True)
def _weighted_means(
    outputs: np.ndarray, pool_counts: np.ndarray, begin: np.ndarray, starts: np.ndarray, first: int, stop: int,
    n_background: int, values: np.ndarray,
) -> None:
    """:func:`weighted_means` on checked arguments."""
    lo = starts[first]
    n_out = outputs.shape[1]
    for s in range(first, stop):
        read, written, n_rows = begin[s], starts[s] - lo, starts[s + 1] - starts[s]
        for o in range(n_out):
            total = 0.0
            for t in range(n_rows):  # in row order
                total += pool_counts[read + t] * outputs[written + t, o]
            values[s - first, o] = total / n_background


def build_distinct_rows(
    background: np.ndarray, x: np.ndarray, column_player: np.ndarray, masks: np.ndarray, rows: RowSet,
    first: int, stop: int, out: np.ndarray,
) -> int:
    """Write the synthetic rows of coalitions ``first:stop`` of ``rows`` into ``out``, row-major,
    coalition after coalition; returns how many.

    ``background``: ``(N, D)`` float64; ``x``: ``(D,)`` float64; ``column_player``: ``(D,)``;
    ``masks``: ``(S, M)`` bool, the coalitions of ``rows``; ``out``: ``(>= R', D)`` float64,
    C-contiguous, for the ``R' = rows.starts[stop] - rows.starts[first]`` rows. A row is ``x``
    on the columns of the players its coalition holds and its representative's background row
    elsewhere, bit for bit.
    """
    inputs = (background, x, column_player, masks, rows.pool_rows, rows.begin, rows.starts)
    dtypes = (np.float64, np.float64, np.int64, np.bool_, np.int64, np.int64, np.int64)
    ready = [read_only(a, t) for a, t in zip(inputs, dtypes)]
    _check_span(rows, first, stop)
    check_writable("out", out)
    if out.shape[0] < rows.starts[stop] - rows.starts[first] or out.shape[1] != background.shape[1]:
        raise ValueError(f"out {out.shape} cannot hold the rows of coalitions {first}:{stop}")
    return int(_build_distinct_rows(*ready, int(first), int(stop), out))


def weighted_means(
    outputs: np.ndarray, rows: RowSet, first: int, stop: int, n_background: int, values: np.ndarray,
) -> None:
    """``values[s - first] = sum_t count_t * outputs[rows.starts[s] - lo + t] / n_background``
    over coalition ``s``'s representatives ``t``, for ``s`` in ``first:stop``
    (``lo = rows.starts[first]``), summed in that order.

    ``outputs``: ``(>= R', K)`` float64, the model's output on the rows
    :func:`build_distinct_rows` wrote; ``values``: ``(stop - first, K)`` float64, C-contiguous.
    """
    inputs = (outputs, rows.pool_counts, rows.begin, rows.starts)
    dtypes = (np.float64, np.float64, np.int64, np.int64)
    ready = [read_only(a, t) for a, t in zip(inputs, dtypes)]
    _check_span(rows, first, stop)
    check_writable("values", values)
    if values.shape != (stop - first, outputs.shape[1]) or len(outputs) < rows.starts[stop] - rows.starts[first]:
        raise ValueError(f"values {values.shape} or outputs {outputs.shape} do not fit coalitions {first}:{stop}")
    _weighted_means(*ready, int(first), int(stop), int(n_background), values)


def _check_span(rows: RowSet, first: int, stop: int) -> None:
    """The compiled loops do not check bounds: coalitions ``first:stop`` must read inside the pools."""
    if not 0 <= first < stop <= len(rows):
        raise ValueError(f"coalitions {first}:{stop} are not within the {len(rows)} of the row set")
    ends = rows.begin[first:stop] + np.diff(rows.starts[first : stop + 1])
    if rows.begin[first:stop].min() < 0 or ends.max() > min(len(rows.pool_rows), len(rows.pool_counts)):
        raise ValueError(f"the row set's coalitions {first}:{stop} reach outside its pools")


def compiled_versions() -> dict[str, int]:
    """How many machine-code versions of each kernel this process holds: 1 once used, since
    every input is normalised; more would mean a recompilation (seconds) per new input type."""
    return {kernel.__name__.lstrip("_"): len(kernel.signatures) for kernel in (_build_distinct_rows, _weighted_means)}


def compile_kernels() -> None:
    """Compile (or load from numba's cache) both functions for the engine's argument types."""
    background = np.zeros((1, 1))
    rows = RowSet.laid_out(np.zeros(1, dtype=np.int64), np.ones(1), np.array([0, 1], dtype=np.int64))
    out = np.empty((1, 1))
    build_distinct_rows(background, background[0], np.zeros(1, dtype=np.int64), np.zeros((1, 1), dtype=np.bool_),
                        rows, 0, 1, out)
    weighted_means(out, rows, 0, 1, 1, np.empty((1, 1)))
