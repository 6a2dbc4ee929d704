"""Each distinct synthetic row of an instance once, shared by all its coalitions (``row_strategy="shared"``).

For an instance ``x`` and a background row ``b``, the synthetic row of coalition ``S`` is ``x``
on the columns of the players in ``S`` and ``b`` elsewhere. Where ``b`` holds the same values
as ``x`` on every column of a player, whether that player is in ``S`` does not change the row.
So the row depends on ``S`` only through ``S & P_b``, ``P_b`` being the players on which ``b``
differs from ``x``, and ``b`` gives at most ``2**|P_b|`` distinct rows however many coalitions
the plan holds. On the Adult workload a background row differs from an instance on about 7 of
the 12 players: the 4094 coalitions x 100 background rows of exact mode need 0.03 of the naive
rows (each coalition's distinct rows, the ``"distinct"`` strategy, need 0.754).

The rows' classes depend on the background row only through its pattern ``P_b``: background rows
of one pattern (on Adult, an instance meets about 46 patterns among the 100 background rows) have
their rows in the same order, so which coalition reads which of them is worked out once per
pattern, and, where every instance has the same coalitions (exact mode), once per engine
(:class:`PatternCache`). The values are ``v(S) = sum_b f(row(b, S & P_b)) / N``: each pattern's
outputs are summed over its background rows first (in background order), then each coalition
adds the row it reads of each pattern's sums, the patterns in the order of their first
background row (:class:`PatternSums`; :func:`accumulate` sums over the background rows in order
where the patterns' index would not fit). Neither order depends on where the chunks end, and a
row's place in its chunk is a function of the instance and ``chunk_rows`` only, so an engine
gives the same bits for an instance wherever it runs.

A chunk holds consecutive background rows, each with its distinct rows in the order of their
subset of ``P_b`` (as a number whose bit ``j`` is the ``j``-th player of ``P_b``), until
``chunk_rows`` rows would be exceeded or the index (which row each coalition of each pattern
reads) would hold more than :data:`INDEX_ENTRIES_PER_ROW` ``x chunk_rows`` entries; a background
row with more distinct rows than ``chunk_rows`` has a chunk of its own. Up to
:data:`MAX_PLAYERS` players, as coalitions are 64-bit keys.
"""
from __future__ import annotations

import numba
import numpy as np

from explainers.kernelshap.kernel_arguments import check_writable, read_only

#: the most players the strategy handles (coalitions are ``int64`` bitmasks)
MAX_PLAYERS = 62
#: the most memory a :class:`PatternCache` takes, and the most players it takes
PATTERN_CACHE_BYTES = 64 * 2**20
PATTERN_CACHE_MAX_PLAYERS = 20
#: the most memory an instance's patterns may take at worst (their index, ``N x S`` int32, and
#: sums, at most ``N x S x K`` float64) for its totals to be summed by pattern (:class:`PatternSums`)
PATTERN_BYTES = 64 * 2**20
#: entries of the chunk's index (its background rows, at most one pattern each, x coalitions; int32)
#: per synthetic row of the chunk
INDEX_ENTRIES_PER_ROW = 16


@numba.njit(cache=True, nogil=True)
def _build_shared_rows(
    background: np.ndarray, x: np.ndarray, column_player: np.ndarray, keys: np.ndarray, n_players: int,
    b_lo: int, max_rows: int, max_background: int, out: np.ndarray, index: np.ndarray, layout: np.ndarray,
    cache_slot: np.ndarray, cache_index: np.ndarray, cache_subsets: np.ndarray, cache_offsets: np.ndarray,
    cache_state: np.ndarray,
) -> tuple[int, int, int]:
    """:func:`build_shared_rows` on checked arguments (numba does not check bounds)."""
    n_bg, n_cols = background.shape
    n_coalitions = keys.shape[0]
    background_bits = background.view(np.int64)
    x_bits = x.view(np.int64)
    out_bits = out.view(np.int64)
    n_bytes = (n_players + 7) // 8
    position = np.empty(8 * n_bytes, dtype=np.int64)
    tables = np.empty((n_bytes, 256), dtype=np.int64)
    shift = np.empty(n_cols, dtype=np.int64)
    subsets = np.empty(n_coalitions, dtype=np.int64)
    dense_slots = 2 * n_coalitions + 2
    slot = np.empty(dense_slots, dtype=np.int64)
    lowest_bit = np.zeros(256, dtype=np.int64)  # of each byte value
    for v in range(1, 256):
        while not (v >> lowest_bit[v]) & 1:
            lowest_bit[v] += 1
    # per pattern of the chunk: its players, and its subsets in the order of their rows
    pattern_players = np.empty(max_background, dtype=np.int64)
    subset_start = np.zeros(max_background + 1, dtype=np.int64)
    pattern_subsets = np.empty(max_rows + n_coalitions + 1, dtype=np.int64)
    pattern_of, row_base, pattern_rows, pattern_keys = layout[0], layout[1], layout[2], layout[3]
    n_rows = 0
    n_patterns = 0
    b = b_lo
    while b < n_bg and b - b_lo < max_background:
        differs = 0
        for j in range(n_cols):
            if background_bits[b, j] != x_bits[j]:
                differs |= np.int64(1) << column_player[j]
        p = 0
        while p < n_patterns and pattern_players[p] != differs:
            p += 1
        cached = cache_slot[differs] if cache_slot.shape[0] > 0 else -1
        if p == n_patterns and cached >= 0:  # a pattern of an earlier instance: as worked out then
            first = subset_start[p]
            lo, hi = cache_offsets[cached], cache_offsets[cached + 1]
            n_new = hi - lo
            for u in range(n_new):
                pattern_subsets[first + u] = cache_subsets[lo + u]
            for s in range(n_coalitions):
                index[p, s] = cache_index[cached, s]
            if n_rows + n_new > max_rows and b > b_lo:
                break
            pattern_players[p] = differs
            pattern_keys[p] = differs
            pattern_rows[p] = n_new
            subset_start[p + 1] = first + n_new
            n_patterns += 1
        elif p == n_patterns:  # a new pattern: which coalition reads which of its subsets
            n_differ = 0
            for q in range(8 * n_bytes):
                if q < n_players and (differs >> q) & 1:
                    position[q] = n_differ
                    n_differ += 1
                else:
                    position[q] = -1
            # tables[k, v]: the subset of the pattern (bit j: its j-th player) of key byte k = v
            for k in range(n_bytes):
                tables[k, 0] = 0
                for v in range(1, 256):
                    here = position[8 * k + lowest_bit[v]]
                    tables[k, v] = tables[k, v & (v - 1)] | ((np.int64(1) << here) if here >= 0 else 0)
            for s in range(n_coalitions):
                key = keys[s]
                subset = 0
                for k in range(n_bytes):
                    subset |= tables[k, (key >> (8 * k)) & 255]
                subsets[s] = subset
            first = subset_start[p]
            if n_differ < 62 and (np.int64(1) << n_differ) <= dense_slots:  # number the subsets in order
                size = np.int64(1) << n_differ
                for t in range(size):
                    slot[t] = -1
                for s in range(n_coalitions):
                    slot[subsets[s]] = 0
                n_new = 0
                for t in range(size):
                    if slot[t] == 0:
                        slot[t] = n_new
                        pattern_subsets[first + n_new] = t
                        n_new += 1
                for s in range(n_coalitions):
                    index[p, s] = slot[subsets[s]]
            else:
                order = np.argsort(subsets)
                n_new = 0
                for i in range(n_coalitions):
                    s = order[i]
                    if n_new == 0 or subsets[s] != pattern_subsets[first + n_new - 1]:
                        pattern_subsets[first + n_new] = subsets[s]
                        n_new += 1
                    index[p, s] = n_new - 1
            n_cached, used = cache_state[0], cache_state[1]
            if cache_slot.shape[0] > 0 and n_cached < cache_index.shape[0] and used + n_new <= cache_subsets.shape[0]:
                for u in range(n_new):
                    cache_subsets[used + u] = pattern_subsets[first + u]
                for s in range(n_coalitions):
                    cache_index[n_cached, s] = index[p, s]
                cache_offsets[n_cached + 1] = used + n_new
                cache_slot[differs] = n_cached
                cache_state[0], cache_state[1] = n_cached + 1, used + n_new
            if n_rows + n_new > max_rows and b > b_lo:
                break  # the pattern is not kept: the next chunk starts with this background row
            pattern_players[p] = differs
            pattern_keys[p] = differs
            pattern_rows[p] = n_new
            subset_start[p + 1] = first + n_new
            n_patterns += 1
        elif n_rows + pattern_rows[p] > max_rows:
            break
        for j in range(n_cols):
            q = column_player[j]
            shift[j] = 63
            if (differs >> q) & 1:  # the rank of player q among the pattern's players
                shift[j] = 0
                for r in range(q):
                    shift[j] += (differs >> r) & 1
        row = b - b_lo
        pattern_of[row] = p
        row_base[row] = n_rows
        for u in range(pattern_rows[p]):
            t = pattern_subsets[subset_start[p] + u]
            r = n_rows + u
            for j in range(n_cols):
                take_x = -((t >> shift[j]) & 1)
                out_bits[r, j] = (x_bits[j] & take_x) | (background_bits[b, j] & ~take_x)
        n_rows += pattern_rows[p]
        b += 1
    return b, n_rows, n_patterns


@numba.njit(cache=True, nogil=True)
def _accumulate(
    outputs: np.ndarray, index: np.ndarray, layout: np.ndarray, n_background: int, n_patterns: int,
    totals: np.ndarray,
) -> None:
    """:func:`accumulate` on checked arguments; the layout is checked here, as it is read."""
    n_out, width = outputs.shape
    pattern_of, row_base, pattern_rows = layout[0], layout[1], layout[2]
    for row in range(n_background):  # in background order, whatever the chunks
        p = pattern_of[row]
        base = row_base[row]
        if p < 0 or p >= n_patterns or base < 0 or base + pattern_rows[p] > n_out:
            raise IndexError("a background row's rows are outside the chunk's outputs")
        for s in range(index.shape[1]):
            u = index[p, s]
            if u < 0 or u >= pattern_rows[p]:
                raise IndexError("a coalition's row is outside its pattern's rows")
            for o in range(width):
                totals[s, o] += outputs[base + u, o]


def build_shared_rows(
    background: np.ndarray, x: np.ndarray, column_player: np.ndarray, keys: np.ndarray, n_players: int,
    first_background: int, max_rows: int, max_background: int, out: np.ndarray, index: np.ndarray,
    layout: np.ndarray, cache: PatternCache | None = None,
) -> tuple[int, int, int]:
    """Write the distinct synthetic rows of background rows ``first_background:`` into ``out``,
    row-major, while they fit; returns ``(stop, n_rows, n_patterns)``: the chunk is background
    rows ``first_background:stop``, its rows are ``out[:n_rows]``, and its background rows differ
    from ``x`` on ``n_patterns`` distinct sets of players (its patterns).

    ``background``: ``(N, D)`` float64; ``x``: ``(D,)`` float64; ``column_player``: ``(D,)``
    ints below ``n_players`` (at most :data:`MAX_PLAYERS`); ``keys``: ``(S,)`` int64, the
    coalitions as bitmasks of players. The chunk takes at most ``max_background`` background
    rows and ``max_rows`` synthetic rows (at least one background row: ``out`` ``(>= max(max_rows,
    S), D)`` float64 has room for one row's ``S``). Coalitions that agree on a pattern's players
    read the same row, so a pattern of ``d`` players has at most ``min(S, 2**d)`` rows per
    background row, in the same order for each of its background rows. Filled in:

    - ``layout`` ``(4, >= max_background)`` int64: for the chunk's ``i``-th background row, its
      pattern ``layout[0, i]`` (numbered in order of first sight) and its first row in ``out``
      ``layout[1, i]``; for pattern ``p``, its rows per background row ``layout[2, p]`` and its
      players ``layout[3, p]`` (a bitmask);
    - ``index`` ``(>= max_background, S)`` int32: for pattern ``p`` and coalition ``s``, which of the
      pattern's rows the coalition reads: row ``layout[1, i] + index[p, s]`` of ``out`` is ``x`` on
      the players of ``s`` and background row ``first_background + i`` elsewhere, bit for bit.

    ``cache``: a :class:`PatternCache` for these ``keys`` (the same coalitions for every instance,
    as in exact mode), where what a pattern met before was worked out is taken as it was.
    """
    n_coalitions = len(keys)
    if not 0 < n_players <= MAX_PLAYERS:
        raise ValueError(f"the shared strategy takes 1 to {MAX_PLAYERS} players, got {n_players}")
    if not 0 <= first_background < len(background):
        raise ValueError(f"background row {first_background} is not one of the {len(background)}")
    if len(column_player) != background.shape[1] or x.shape != (background.shape[1],) \
            or np.min(column_player) < 0 or np.max(column_player) >= n_players:
        raise ValueError("x, column_player and the background's columns do not match")
    if n_coalitions and (keys.min() < 0 or keys.max() >= 2**n_players):
        raise ValueError(f"coalition keys must be bitmasks of {n_players} players")
    check_writable("out", out, np.float64)
    check_writable("index", index, np.int32)
    check_writable("layout", layout, np.int64)
    if out.shape[0] < max(max_rows, n_coalitions) or out.shape[1] != background.shape[1]:
        raise ValueError(f"out {out.shape} cannot hold {max(max_rows, n_coalitions)} rows of the background's width")
    if max_background < 1 or index.shape[0] < max_background or index.shape[1] != n_coalitions \
            or layout.shape[0] != 4 or layout.shape[1] < max_background:
        raise ValueError(f"index {index.shape} or layout {layout.shape} cannot hold {max_background} "
                         f"background rows of {n_coalitions} coalitions")
    if cache is not None and (cache.n_coalitions != n_coalitions or len(cache.slot) != 2**n_players):
        raise ValueError(f"the pattern cache is for {cache.n_coalitions} coalitions of {len(cache.slot).bit_length() - 1} "
                         f"players, not {n_coalitions} of {n_players}")
    arrays = cache.arrays() if cache is not None else _NO_CACHE
    for name, array in zip(("slot", "index", "subsets", "offsets", "state"), arrays):
        check_writable(f"the pattern cache's {name}", array, array.dtype)
    stop, n_rows, n_patterns = _build_shared_rows(
        read_only(background, np.float64), read_only(x, np.float64), read_only(column_player, np.int64),
        read_only(keys, np.int64), int(n_players), int(first_background), int(max_rows), int(max_background),
        out, index, layout, *arrays,
    )
    return int(stop), int(n_rows), int(n_patterns)


def accumulate(
    outputs: np.ndarray, index: np.ndarray, layout: np.ndarray, n_background: int, n_patterns: int,
    totals: np.ndarray,
) -> None:
    """Add the model's output on a chunk's rows to each coalition's total, background row after
    background row: ``totals[s] += outputs[layout[1, i] + index[layout[0, i], s]]`` for the chunk's
    background rows ``i`` in order. Chunk after chunk, each total is then summed in background
    order, whatever the chunks.

    ``outputs``: ``(R, K)`` float64; ``index``, ``layout``: as :func:`build_shared_rows` wrote them
    for a chunk of ``n_background`` background rows and ``n_patterns`` patterns; ``totals``:
    ``(S, K)`` float64, C-contiguous.
    """
    check_writable("totals", totals, np.float64)
    if totals.shape != (index.shape[1], outputs.shape[1]) or not 0 <= n_background <= layout.shape[1] \
            or not 0 <= n_patterns <= min(n_background, len(index)):
        raise ValueError(f"totals {totals.shape}, index {index.shape}, layout {layout.shape} and outputs "
                         f"{outputs.shape} do not fit")
    _accumulate(read_only(outputs, np.float64), read_only(index, np.int32), read_only(layout, np.int64),
                int(n_background), int(n_patterns), totals)


class PatternCache:
    """What each pattern met so far was worked out to be (its subsets in row order, and which of
    them each coalition reads), for an engine whose every instance has the same coalitions
    (exact mode): an instance meets about 46 patterns on Adult, most of them met before. It holds
    at most :data:`PATTERN_CACHE_BYTES`, then keeps what it has; up to
    :data:`PATTERN_CACHE_MAX_PLAYERS` players (a pattern is found by its bitmask, directly)."""

    def __init__(self, n_players: int, n_coalitions: int) -> None:
        if not 0 < n_players <= PATTERN_CACHE_MAX_PLAYERS:
            raise ValueError(f"the pattern cache takes 1 to {PATTERN_CACHE_MAX_PLAYERS} players, got {n_players}")
        self.n_coalitions = n_coalitions
        self.slot = np.full(2**n_players, -1, dtype=np.int32)
        per_pattern = 4 * max(n_coalitions, 1) + 8 * min(max(n_coalitions, 1), 2**n_players) + 8
        patterns = max(1, min(2**n_players, (PATTERN_CACHE_BYTES - self.slot.nbytes) // per_pattern))
        self.index = np.empty((patterns, n_coalitions), dtype=np.int32)
        self.subsets = np.empty(patterns * min(max(n_coalitions, 1), 2**n_players), dtype=np.int64)
        self.offsets = np.zeros(patterns + 1, dtype=np.int64)
        self.state = np.zeros(2, dtype=np.int64)  # patterns held, subsets used

    @property
    def patterns(self) -> int:
        return int(self.state[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.slot, self.index, self.subsets, self.offsets, self.state


#: the arrays of no cache: the kernel looks nothing up
_NO_CACHE = (np.empty(0, dtype=np.int32), np.empty((0, 0), dtype=np.int32), np.empty(0, dtype=np.int64),
             np.zeros(1, dtype=np.int64), np.zeros(2, dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _add_to_patterns(
    outputs: np.ndarray, index: np.ndarray, layout: np.ndarray, n_background: int, n_patterns: int,
    copy_index: bool, state: np.ndarray, pattern_keys: np.ndarray, pattern_rows: np.ndarray, offsets: np.ndarray,
    pattern_index: np.ndarray, sums: np.ndarray,
) -> None:
    """:meth:`PatternSums.add` on checked arguments; the layout is checked here, as it is read."""
    n_out, width = outputs.shape
    pattern_of, row_base, chunk_rows, chunk_keys = layout[0], layout[1], layout[2], layout[3]
    n_global, used = state[0], state[1]
    global_of = np.empty(n_patterns, dtype=np.int64)
    for p in range(n_patterns):
        g = 0
        while g < n_global and pattern_keys[g] != chunk_keys[p]:
            g += 1
        if g == n_global:  # first seen: its sums go after the others'
            if g >= pattern_keys.shape[0] or used + chunk_rows[p] > sums.shape[0]:
                raise IndexError("more patterns or pattern rows than the sums have room for")
            pattern_keys[g], pattern_rows[g], offsets[g] = chunk_keys[p], chunk_rows[p], used
            used += chunk_rows[p]
            n_global += 1
            if copy_index:
                for s in range(index.shape[1]):
                    pattern_index[g, s] = index[p, s]
        elif pattern_rows[g] != chunk_rows[p]:
            raise IndexError("a pattern has other rows in another chunk")
        global_of[p] = g
    for row in range(n_background):  # in background order, whatever the chunks
        p = pattern_of[row]
        base = row_base[row]
        if p < 0 or p >= n_patterns or base < 0 or base + chunk_rows[p] > n_out:
            raise IndexError("a background row's rows are outside the chunk's outputs")
        first = offsets[global_of[p]]
        for u in range(chunk_rows[p]):
            for o in range(width):
                sums[first + u, o] += outputs[base + u, o]
    state[0], state[1] = n_global, used


@numba.njit(cache=True, nogil=True)
def _fold_patterns(
    sums: np.ndarray, pattern_rows: np.ndarray, offsets: np.ndarray, index: np.ndarray, n_patterns: int,
    totals: np.ndarray,
) -> None:
    """:meth:`PatternSums.fold` on checked arguments."""
    width = sums.shape[1]
    for g in range(n_patterns):  # in order of the patterns' first background row
        first, rows = offsets[g], pattern_rows[g]
        for s in range(index.shape[1]):
            u = index[g, s]
            if u < 0 or u >= rows:
                raise IndexError("a coalition's row is outside its pattern's rows")
            for o in range(width):
                totals[s, o] += sums[first + u, o]


class PatternSums:
    """One instance's coalition totals, pattern by pattern: the model's outputs on a pattern's
    rows are summed over its background rows (in background order), and each coalition's total
    is then the sum over the patterns (in the order of their first background row) of the row it
    reads. Background rows of one pattern share their rows' order, so a coalition reads one sum
    per pattern instead of one output per background row (on Adult about 46 patterns among 100
    rows). The bits depend on the instance and the outputs only, not on where the chunks end.

    The buffers are allocated once and reused instance after instance; ``index`` ``(N, S)``
    int32 holds which row each coalition reads of each pattern when an instance takes more than
    one chunk (a chunk's own index is used as it is when it covers the whole background).
    """

    def __init__(self, n_background: int, width: int, rows: int) -> None:
        self.n_coalitions = 0
        self.keys = np.empty(n_background, dtype=np.int64)
        self.rows = np.empty(n_background, dtype=np.int64)
        self.offsets = np.empty(n_background, dtype=np.int64)
        self.sums = np.zeros((max(rows, 1), width))
        self.state = np.zeros(2, dtype=np.int64)  # patterns seen, rows of ``sums`` used
        self._index_buffer = np.empty(0, dtype=np.int32)  # flat, viewed as (N, S)
        self._index: np.ndarray | None = None
        self._chunk_index: np.ndarray | None = None

    def fits(self, n_coalitions: int) -> bool:
        """Whether an instance of ``n_coalitions`` is summed by pattern: its patterns' index and
        sums take at most :data:`PATTERN_BYTES` at worst (past it :func:`accumulate` sums in
        background order). A function of the problem's sizes only, not of the instance."""
        return len(self.keys) * n_coalitions * (4 + 8 * self.sums.shape[1]) <= PATTERN_BYTES

    def start(self, n_coalitions: int) -> None:
        """Begin an instance of ``n_coalitions``."""
        self.sums[: self.state[1]] = 0.0
        self.state[:] = 0
        self.n_coalitions = n_coalitions
        self._index = self._chunk_index = None

    def add(self, outputs: np.ndarray, index: np.ndarray, layout: np.ndarray, n_background: int,
            n_patterns: int, whole: bool) -> None:
        """Add a chunk's outputs ``(R, K)`` to its patterns' sums; ``index``, ``layout``, as
        :func:`build_shared_rows` wrote them for the chunk's ``n_background`` background rows and
        ``n_patterns`` patterns; ``whole``: the chunk is the instance's whole background."""
        check_writable("sums", self.sums, np.float64)
        if outputs.shape[1] != self.sums.shape[1] or index.shape[1] != self.n_coalitions                 or not 0 <= n_background <= layout.shape[1] or not 0 <= n_patterns <= min(n_background, len(index)):
            raise ValueError(f"index {index.shape}, layout {layout.shape} and outputs {outputs.shape} do not fit")
        needed = int(self.state[1]) + len(outputs)
        if needed > len(self.sums):
            grown = np.zeros((max(needed, 2 * len(self.sums)), self.sums.shape[1]))
            grown[: self.state[1]] = self.sums[: self.state[1]]
            self.sums = grown
        if whole:
            self._chunk_index = index
        elif self._index is None:
            entries = len(self.keys) * self.n_coalitions
            if len(self._index_buffer) < entries:
                self._index_buffer = np.empty(entries, dtype=np.int32)
            self._index = self._index_buffer[:entries].reshape(len(self.keys), self.n_coalitions)
        _add_to_patterns(read_only(outputs, np.float64), read_only(index, np.int32), read_only(layout, np.int64),
                         int(n_background), int(n_patterns), not whole, self.state, self.keys, self.rows,
                         self.offsets, self._index if self._index is not None else np.empty((0, 0), np.int32),
                         self.sums)

    def fold(self, totals: np.ndarray) -> None:
        """Add each coalition's sums to ``totals`` ``(S, K)`` float64, C-contiguous."""
        check_writable("totals", totals, np.float64)
        index = self._chunk_index if self._chunk_index is not None else self._index
        if totals.shape != (self.n_coalitions, self.sums.shape[1]) or index is None:
            raise ValueError(f"totals {totals.shape} do not fit, or no chunk was added")
        _fold_patterns(read_only(self.sums, np.float64), read_only(self.rows, np.int64),
                       read_only(self.offsets, np.int64), read_only(index, np.int32), int(self.state[0]), totals)


def shared_row_count(background: np.ndarray, x: np.ndarray, column_player: np.ndarray, keys: np.ndarray) -> int:
    """How many distinct synthetic rows the coalitions ``keys`` ``(S,)`` give ``x`` ``(D,)``
    with ``background`` ``(N, D)``: per background row, the distinct ``key & P_b`` (NumPy, for reports)."""
    differs = background.view(np.int64) != np.ascontiguousarray(x).view(np.int64)[None, :]
    player_bits = np.int64(1) << np.asarray(column_player, dtype=np.int64)
    masks = np.bitwise_or.reduce(np.where(differs, player_bits[None, :], np.int64(0)), axis=1)
    return int(sum(len(np.unique(keys & mask)) for mask in masks))


def compiled_versions() -> dict[str, int]:
    """Machine-code versions of each kernel in this process (1 once used: inputs are normalised)."""
    kernels = (_build_shared_rows, _accumulate, _add_to_patterns, _fold_patterns)
    return {kernel.__name__.lstrip("_"): len(kernel.signatures) for kernel in kernels}


def compile_kernels() -> None:
    """Compile (or load from numba's cache) both kernels for the engine's argument types."""
    background = np.zeros((1, 1))
    out, index, layout = np.empty((2, 1)), np.empty((1, 1), dtype=np.int32), np.empty((4, 1), dtype=np.int64)
    _, _, n_patterns = build_shared_rows(background, background[0], np.zeros(1, dtype=np.int64),
                                         np.ones(1, dtype=np.int64), 1, 0, 1, 1, out, index, layout)
    accumulate(out, index, layout, 1, n_patterns, np.zeros((1, 1)))
    for whole in (True, False):
        sums = PatternSums(1, 1, 1)
        sums.start(1)
        sums.add(out, index, layout, 1, n_patterns, whole)
        sums.fold(np.zeros((1, 1)))
