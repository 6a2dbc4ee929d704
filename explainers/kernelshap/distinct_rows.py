"""Which background rows give distinct synthetic rows for a coalition, and how many each stands for.

For a coalition ``S`` the synthetic row of background row ``b`` is ``x`` on the columns of
the players in ``S`` and ``b`` elsewhere. Two background rows that agree on every column of
the players outside ``S`` give the same row, whatever ``x`` is, so::

    mean_b f(x_S, B_b) = sum_u count_u f(x_S, B_u) / N

over one representative ``u`` of each class. The classes depend on the background and ``S``
only: they are computed once per coalition and kept (bounded in bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explainers.kernelshap.coalitions import coalition_codes, coalition_keys

#: bytes of representatives and counts kept per engine by default (4094 Adult coalitions: ~3 MB)
DEFAULT_DISTINCT_CACHE_BYTES = 64 * 2**20
#: keys above this are renumbered before the next player's labels are mixed in (no overflow)
_KEY_LIMIT = 2**62


@dataclass(frozen=True)
class RowSet:
    """Representatives of ``S`` coalitions, read from shared pools (not copied per request).

    Coalition ``s`` has ``n_s = starts[s + 1] - starts[s]`` representatives: the background rows
    ``pool_rows[begin[s]:begin[s] + n_s]``, each standing for ``pool_counts[...]`` background
    rows (a coalition's counts sum to ``N``). ``begin``: ``(S,)``; ``starts``: ``(S + 1,)``, where
    each coalition's synthetic rows begin when they are laid end to end (``starts[-1]`` in all).
    """

    pool_rows: np.ndarray
    pool_counts: np.ndarray
    begin: np.ndarray
    starts: np.ndarray

    @classmethod
    def laid_out(cls, rows: np.ndarray, counts: np.ndarray, starts: np.ndarray) -> RowSet:
        """A set whose pools hold its representatives end to end: ``rows``, ``counts`` ``(R,)``."""
        return cls(rows, counts, starts[:-1], starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def n_rows(self) -> int:
        return int(self.starts[-1])

    @property
    def rows(self) -> np.ndarray:
        """``(R,)``: the representatives, coalition after coalition."""
        return self.pool_rows[self._pool_index()]

    @property
    def counts(self) -> np.ndarray:
        """``(R,)``: how many background rows each representative stands for, in that order."""
        return self.pool_counts[self._pool_index()]

    def _pool_index(self) -> np.ndarray:
        return segment_indices(self.begin, np.diff(self.starts))


def segment_indices(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Indices of the segments ``[starts[i], starts[i] + sizes[i])`` laid end to end."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    placed = np.cumsum(sizes) - sizes
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, dtype=np.int64) - placed, sizes)


def _starts_of(sizes: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    return starts


def take(rowset: RowSet, coalitions: np.ndarray) -> RowSet:
    """The representatives of ``rowset``'s coalitions ``coalitions`` ``(c,)``, in that order
    (the pools are shared)."""
    sizes = np.diff(rowset.starts)[coalitions]
    return RowSet(rowset.pool_rows, rowset.pool_counts, rowset.begin[coalitions], _starts_of(sizes))


#: up to this many players a coalition's entry is found in a table of ``2**M`` slots, else by dict
_TABLE_MAX_PLAYERS = 16
#: bytes one stored representative takes (its row and its count) and one stored coalition
_BYTES_PER_ROW = 16
_BYTES_PER_ENTRY = 16


class DistinctRows:
    """The distinct synthetic rows of any coalition of a background's players.

    ``background``: ``(N, D)``; ``column_player``: ``(D,)``, the player of each column. The
    classes of each coalition met are kept in arrays that grow by doubling up to
    ``max_cache_bytes`` in all; past it they are computed again whenever they are needed.
    """

    def __init__(self, background: np.ndarray, column_player: np.ndarray, max_cache_bytes: int) -> None:
        self.n_players = int(column_player.max()) + 1
        self.n_background = background.shape[0]
        #: ``(M, N)``: per player, a dense id of each background row's values on its columns
        self.labels = np.zeros((self.n_players, self.n_background), dtype=np.int64)
        self.n_labels = np.ones(self.n_players, dtype=np.int64)
        for p in range(self.n_players):
            sub = np.ascontiguousarray(background[:, column_player == p])
            _, inverse = np.unique(sub, axis=0, return_inverse=True)
            self.labels[p] = inverse.reshape(-1)
            self.n_labels[p] = int(inverse.max()) + 1
        self.max_cache_bytes = int(max_cache_bytes)
        self._reset()

    def _reset(self) -> None:
        self._rows = np.empty(0, dtype=np.int64)
        self._counts = np.empty(0, dtype=np.float64)
        self._n_rows_stored = 0
        self._entry_start = np.empty(0, dtype=np.int64)
        self._entry_size = np.empty(0, dtype=np.int64)
        self._n_stored = 0
        if self.n_players <= _TABLE_MAX_PLAYERS:
            self._table = np.full(2**self.n_players, -1, dtype=np.int64)
        else:
            self._by_code: dict[bytes, int] = {}

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()  # the classes are found again where they are used

    @property
    def cache_bytes(self) -> int:
        """Bytes the stored classes take, as allocated."""
        return self._rows.nbytes + self._counts.nbytes + self._entry_start.nbytes + self._entry_size.nbytes

    def _entries(self, masks: np.ndarray) -> np.ndarray:
        """The stored entry of each coalition of ``masks`` ``(S, M)``, -1 where none is."""
        if self.n_players <= _TABLE_MAX_PLAYERS:
            return self._table[coalition_keys(masks)]
        get = self._by_code.get
        return np.fromiter((get(bytes(c), -1) for c in coalition_codes(masks)), dtype=np.int64, count=len(masks))

    def _grow(self, n_rows: int, n_entries: int) -> None:
        """Room for ``n_rows`` more representatives and ``n_entries`` more coalitions, doubling
        within ``max_cache_bytes`` (the caller checked that what is stored then fits)."""
        rows_needed, entries_needed = self._n_rows_stored + n_rows, self._n_stored + n_entries
        if rows_needed <= len(self._rows) and entries_needed <= len(self._entry_start):
            return
        budget = self.max_cache_bytes
        entries = max(entries_needed, min(2 * len(self._entry_start),
                                          (budget - rows_needed * _BYTES_PER_ROW) // _BYTES_PER_ENTRY))
        rows = max(rows_needed, min(2 * len(self._rows), (budget - entries * _BYTES_PER_ENTRY) // _BYTES_PER_ROW))
        self._rows = _resized(self._rows, rows, self._n_rows_stored)
        self._counts = _resized(self._counts, rows, self._n_rows_stored)
        self._entry_start = _resized(self._entry_start, entries, self._n_stored)
        self._entry_size = _resized(self._entry_size, entries, self._n_stored)

    def _remember(self, masks: np.ndarray, classes: RowSet) -> np.ndarray:
        """Store ``classes`` (laid out end to end) of ``masks`` (distinct coalitions) while there
        is room; returns the entry of each, -1 where it was not stored."""
        sizes = np.diff(classes.starts)
        cost = np.cumsum(sizes * _BYTES_PER_ROW + _BYTES_PER_ENTRY)
        committed = self._n_rows_stored * _BYTES_PER_ROW + self._n_stored * _BYTES_PER_ENTRY
        fits = int(np.searchsorted(cost, self.max_cache_bytes - committed, side="right"))
        entries = np.full(len(masks), -1, dtype=np.int64)
        if fits:
            n_rows = int(classes.starts[fits])
            self._grow(n_rows, fits)
            lo, first_entry = self._n_rows_stored, self._n_stored
            self._rows[lo : lo + n_rows] = classes.pool_rows[:n_rows]
            self._counts[lo : lo + n_rows] = classes.pool_counts[:n_rows]
            entries[:fits] = np.arange(first_entry, first_entry + fits)
            self._entry_start[first_entry : first_entry + fits] = lo + classes.starts[:fits]
            self._entry_size[first_entry : first_entry + fits] = sizes[:fits]
            self._n_stored += fits
            self._n_rows_stored += n_rows
            if self.n_players <= _TABLE_MAX_PLAYERS:
                self._table[coalition_keys(masks[:fits])] = entries[:fits]
            else:
                for code, entry in zip(coalition_codes(masks[:fits]), entries[:fits].tolist()):
                    self._by_code[bytes(code)] = entry
        return entries

    def of(self, masks: np.ndarray) -> RowSet:
        """The representatives of each coalition of ``masks`` ``(S, M)`` bool, in that order."""
        entries = self._entries(masks)
        missing = np.flatnonzero(entries < 0)
        if not len(missing):
            sizes = self._entry_size[entries]
            return RowSet(self._rows, self._counts, self._entry_start[entries], _starts_of(sizes))
        # each coalition once, even if ``masks`` repeats it, and in the order ``masks`` has them:
        # stored in a plan's own order, its representatives are read from the pools in sequence
        _, first, inverse = np.unique(coalition_keys(masks[missing]), return_index=True, return_inverse=True)
        by_occurrence = np.argsort(first)
        rank = np.empty_like(by_occurrence)
        rank[by_occurrence] = np.arange(len(first))
        first, inverse = first[by_occurrence], rank[inverse.reshape(-1)]
        computed = self._classes(masks[missing[first]])
        entries[missing] = self._remember(masks[missing[first]], computed)[inverse]
        if (entries >= 0).all():
            return self.of(masks)
        # the store is full: lay this request's representatives out afresh, from both sources
        computed_of = np.full(len(masks), -1, dtype=np.int64)
        computed_of[missing] = inverse
        stored = entries >= 0
        sizes = np.where(stored, self._entry_size[np.maximum(entries, 0)],
                         np.diff(computed.starts)[np.maximum(computed_of, 0)])
        starts = _starts_of(sizes)
        rows = np.empty(starts[-1], dtype=np.int64)
        counts = np.empty(starts[-1], dtype=np.float64)
        for pick, pool_rows, pool_counts, begin in (
            (stored, self._rows, self._counts, self._entry_start[entries[stored]]),
            (~stored, computed.pool_rows, computed.pool_counts, computed.starts[:-1][computed_of[~stored]]),
        ):
            into = segment_indices(starts[:-1][pick], sizes[pick])
            read = segment_indices(begin, sizes[pick])
            rows[into] = pool_rows[read]
            counts[into] = pool_counts[read]
        return RowSet.laid_out(rows, counts, starts)

    def _classes(self, masks: np.ndarray) -> RowSet:
        """For each coalition of ``masks`` ``(c, M)``: the first row of each class and its size."""
        c, n = len(masks), self.n_background
        keys = np.zeros((c, n), dtype=np.int64)
        bound = 1
        for p in np.flatnonzero(self.n_labels > 1):
            radix = int(self.n_labels[p])
            if bound * radix > _KEY_LIMIT:
                _, inverse = np.unique(keys, return_inverse=True)
                keys = inverse.reshape(c, n).astype(np.int64)
                bound = int(keys.max()) + 1
            outside = ~masks[:, p]
            keys[outside] = keys[outside] * radix + self.labels[p]
            bound *= radix
        order = np.argsort(keys, axis=1, kind="stable")
        ordered = np.take_along_axis(keys, order, axis=1)
        first = np.ones((c, n), dtype=bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        flat_first = np.flatnonzero(first.ravel())
        counts = np.diff(np.append(flat_first, c * n)).astype(np.float64)
        return RowSet.laid_out(order.ravel()[flat_first].astype(np.int64), counts, _starts_of(first.sum(axis=1)))


def _resized(array: np.ndarray, length: int, keep: int) -> np.ndarray:
    """``array`` with room for ``length`` items, its first ``keep`` kept."""
    out = np.empty(length, dtype=array.dtype)
    out[:keep] = array[:keep]
    return out
