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

_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_NONE = np.uint64(0)


@numba.njit(cache=True, nogil=True)
def _build_distinct_rows(
    background: np.ndarray, x: np.ndarray, column_player: np.ndarray, masks: np.ndarray,
    representatives: np.ndarray, starts: np.ndarray, first: int, stop: int, out: np.ndarray,
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
        for k in range(starts[s], starts[s + 1]):
            row = representatives[k]
            r = k - lo
            for j in range(n_cols):
                out_bits[r, j] = (background_bits[row, j] & keep[j]) | x_held[j]
    return starts[stop] - lo


@numba.njit(cache=True, nogil=True)
def _weighted_means(
    outputs: np.ndarray, counts: np.ndarray, starts: np.ndarray, first: int, stop: int,
    n_background: int, values: np.ndarray,
) -> None:
    """:func:`weighted_means` on checked arguments."""
    lo = starts[first]
    n_out = outputs.shape[1]
    for s in range(first, stop):
        for o in range(n_out):
            total = 0.0
            for k in range(starts[s], starts[s + 1]):
                total += counts[k] * outputs[k - lo, o]
            values[s - first, o] = total / n_background


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles once per writability, so every input is passed read-only."""
    view = array.view()
    view.flags.writeable = False
    return view


def build_distinct_rows(
    background: np.ndarray, x: np.ndarray, column_player: np.ndarray, masks: np.ndarray,
    representatives: np.ndarray, starts: np.ndarray, first: int, stop: int, out: np.ndarray,
) -> int:
    """Write the synthetic rows of coalitions ``first:stop`` into ``out``, row-major; returns
    how many.

    ``background``: ``(N, D)`` float64; ``x``: ``(D,)`` float64; ``column_player``: ``(D,)``;
    ``masks``: ``(S, M)`` bool; ``representatives``: ``(R,)`` background rows, coalition ``s``'s
    from ``starts[s]`` to ``starts[s + 1]``; ``out``: ``(>= starts[stop] - starts[first], D)``
    float64, C-contiguous. Row ``r`` is ``x`` on the columns of the players its coalition holds
    and its representative's background row elsewhere, bit for bit.
    """
    inputs = (background, x, column_player, masks, representatives, starts)
    dtypes = (np.float64, np.float64, np.int64, np.bool_, np.int64, np.int64)
    ready = [_read_only(np.ascontiguousarray(a, dtype=t)) for a, t in zip(inputs, dtypes)]
    if not out.flags.c_contiguous or out.dtype != np.float64 or not out.flags.writeable:
        raise ValueError("out must be a writable C-contiguous float64 array")
    if out.shape[0] < ready[5][stop] - ready[5][first] or out.shape[1] != ready[0].shape[1]:
        raise ValueError(f"out {out.shape} cannot hold the rows of coalitions {first}:{stop}")
    return int(_build_distinct_rows(*ready, int(first), int(stop), out))


def weighted_means(
    outputs: np.ndarray, counts: np.ndarray, starts: np.ndarray, first: int, stop: int,
    n_background: int, values: np.ndarray,
) -> None:
    """``values[s - first] = sum_k counts[k] * outputs[k - lo] / n_background`` over coalition
    ``s``'s rows ``k``, for ``s`` in ``first:stop`` (``lo = starts[first]``), summed in row order.

    ``outputs``: ``(R', K)`` float64; ``counts``: ``(R,)`` float64; ``starts``: ``(S + 1,)``;
    ``values``: ``(stop - first, K)`` float64, C-contiguous and writable.
    """
    inputs = (outputs, counts, starts)
    dtypes = (np.float64, np.float64, np.int64)
    ready = [_read_only(np.ascontiguousarray(a, dtype=t)) for a, t in zip(inputs, dtypes)]
    if not values.flags.c_contiguous or values.dtype != np.float64 or not values.flags.writeable:
        raise ValueError("values must be a writable C-contiguous float64 array")
    if values.shape != (stop - first, ready[0].shape[1]) or len(ready[0]) < ready[2][stop] - ready[2][first]:
        raise ValueError(f"values {values.shape} or outputs {ready[0].shape} do not fit coalitions {first}:{stop}")
    _weighted_means(*ready, int(first), int(stop), int(n_background), values)


def compiled_versions() -> dict[str, int]:
    """How many machine-code versions of each kernel this process holds: 1 once used, since
    every input is normalised; more would mean a recompilation (seconds) per new input type."""
    return {kernel.__name__.lstrip("_"): len(kernel.signatures) for kernel in (_build_distinct_rows, _weighted_means)}


def compile_kernels() -> None:
    """Compile (or load from numba's cache) both functions for the engine's argument types."""
    background = np.zeros((1, 1))
    masks = np.zeros((1, 1), dtype=np.bool_)
    representatives = np.zeros(1, dtype=np.int64)
    starts = np.array([0, 1], dtype=np.int64)
    out = np.empty((1, 1))
    build_distinct_rows(background, background[0], np.zeros(1, dtype=np.intp), masks, representatives, starts, 0, 1, out)
    weighted_means(out, np.ones(1), starts, 0, 1, 1, np.empty((1, 1)))
