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

from explainers.kernelshap.coalitions import coalition_codes

#: bytes of representatives and counts kept per engine by default (4094 Adult coalitions: ~3 MB)
DEFAULT_DISTINCT_CACHE_BYTES = 64 * 2**20
#: keys above this are renumbered before the next player's labels are mixed in (no overflow)
_KEY_LIMIT = 2**62


@dataclass(frozen=True)
class RowSet:
    """Representatives of ``S`` coalitions, coalition after coalition.

    ``rows``: ``(R,)`` background row indices; ``counts``: ``(R,)`` how many background rows
    each stands for (each coalition's counts sum to ``N``); ``starts``: ``(S + 1,)`` where each
    coalition's representatives begin in ``rows`` (``starts[-1] == R``).
    """

    rows: np.ndarray
    counts: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def n_rows(self) -> int:
        return int(self.starts[-1])


def segment_indices(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Indices of the segments ``[starts[i], starts[i] + sizes[i])`` laid end to end."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    placed = np.cumsum(sizes) - sizes
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, dtype=np.int64) - placed, sizes)


def take(rowset: RowSet, coalitions: np.ndarray) -> RowSet:
    """The representatives of ``rowset``'s coalitions ``coalitions`` ``(c,)``, in that order."""
    sizes = np.diff(rowset.starts)[coalitions]
    index = segment_indices(rowset.starts[coalitions], sizes)
    starts = np.zeros(len(coalitions) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    return RowSet(rowset.rows[index], rowset.counts[index], starts)


#: up to this many players a coalition's entry is found in a table of ``2**M`` slots, else by dict
_TABLE_MAX_PLAYERS = 16


class DistinctRows:
    """The distinct synthetic rows of any coalition of a background's players.

    ``background``: ``(N, D)``; ``column_player``: ``(D,)``, the player of each column. The
    classes of each coalition met are kept in flat arrays up to ``max_cache_bytes``; past it
    they are computed again whenever they are needed.
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
        self._entry_start = np.empty(0, dtype=np.int64)
        self._entry_size = np.empty(0, dtype=np.int64)
        self._n_stored = 0
        if self.n_players <= _TABLE_MAX_PLAYERS:
            self._table = np.full(2**self.n_players, -1, dtype=np.int64)
            self._weights = 1 << np.arange(self.n_players, dtype=np.int64)
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
        return self._rows.nbytes + self._counts.nbytes

    def _entries(self, masks: np.ndarray) -> np.ndarray:
        """The stored entry of each coalition of ``masks`` ``(S, M)``, -1 where none is."""
        if self.n_players <= _TABLE_MAX_PLAYERS:
            return self._table[masks.astype(np.int64) @ self._weights]
        get = self._by_code.get
        return np.fromiter((get(bytes(c), -1) for c in coalition_codes(masks)), dtype=np.int64, count=len(masks))

    def _remember(self, masks: np.ndarray, classes: RowSet) -> None:
        """Store ``classes`` of ``masks`` (distinct coalitions) while there is room."""
        room = self.max_cache_bytes - self.cache_bytes
        sizes = np.diff(classes.starts)
        fits = int(np.searchsorted(np.cumsum(sizes) * 16, room, side="right"))
        entries = np.full(len(masks), -1, dtype=np.int64)
        if fits:
            base = len(self._rows)
            self._rows = np.concatenate([self._rows, classes.rows[: classes.starts[fits]]])
            self._counts = np.concatenate([self._counts, classes.counts[: classes.starts[fits]]])
            entries[:fits] = np.arange(self._n_stored, self._n_stored + fits)
            self._entry_start = np.concatenate([self._entry_start, base + classes.starts[:fits]])
            self._entry_size = np.concatenate([self._entry_size, sizes[:fits]])
            self._n_stored += fits
            if self.n_players <= _TABLE_MAX_PLAYERS:
                self._table[masks[:fits].astype(np.int64) @ self._weights] = entries[:fits]
            else:
                for code, entry in zip(coalition_codes(masks[:fits]), entries[:fits].tolist()):
                    self._by_code[bytes(code)] = entry

    def of(self, masks: np.ndarray) -> RowSet:
        """The representatives of each coalition of ``masks`` ``(S, M)`` bool, in that order."""
        entries = self._entries(masks)
        store_rows, store_counts = self._rows, self._counts
        starts_src = np.zeros(len(masks), dtype=np.int64)
        sizes = np.zeros(len(masks), dtype=np.int64)
        missing = np.flatnonzero(entries < 0)
        if len(missing):
            # each coalition once, even if ``masks`` repeats it
            _, first, inverse = np.unique(coalition_codes(masks[missing]), return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            computed = self._classes(masks[missing[first]])
            self._remember(masks[missing[first]], computed)
            # what was not stored (the cache is full) is read from ``computed``, laid after the store
            starts_src[missing] = len(store_rows) + computed.starts[:-1][inverse]
            sizes[missing] = np.diff(computed.starts)[inverse]
            store_rows = np.concatenate([store_rows, computed.rows])
            store_counts = np.concatenate([store_counts, computed.counts])
        found = entries >= 0
        if found.any():
            starts_src[found] = self._entry_start[entries[found]]
            sizes[found] = self._entry_size[entries[found]]
        index = segment_indices(starts_src, sizes)
        starts = np.zeros(len(masks) + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        return RowSet(store_rows[index], store_counts[index], starts)

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
        starts = np.zeros(c + 1, dtype=np.int64)
        np.cumsum(first.sum(axis=1), out=starts[1:])
        return RowSet(order.ravel()[flat_first].astype(np.int64), counts, starts)
