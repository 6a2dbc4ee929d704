"""Coalition values shared across instances (``KernelShap(reuse_coalitions=True)``).

A coalition's value ``mean_b f(x_S, B_b)`` depends on ``x`` only through ``x_S``, its values
on the columns of the players in ``S``. Once computed for one instance it holds for every
later instance that agrees with it there. The cache maps ``(S, x_S)`` to the value: ``S``
and ``x_S`` are written as one key of ``M`` small integers, per player 0 if the player is
outside ``S`` and else 1 + the id of ``x``'s values on its columns (ids given in order of
first sight). It holds at most ``max_bytes``; once full it keeps what it has and adds nothing.
Coalition sizes whose hit rate over the first ``WARMUP_INSTANCES`` instances is below
``MIN_SIZE_HIT_RATE`` (typically the large coalitions, whose ``x_S`` is nearly unique) are
then neither looked up nor stored: they would cost a lookup and memory for nothing.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

#: default of ``KernelShap(reuse_cache_bytes=...)``: per engine, i.e. per worker
DEFAULT_REUSE_CACHE_BYTES = 256 * 2**20
#: what one entry costs besides its key's and value's bytes: the dict slot and the index object
_ENTRY_OVERHEAD_BYTES = 100
#: instances after which coalition sizes that rarely hit are no longer looked up nor stored
WARMUP_INSTANCES = 16
#: the hit rate below which a coalition size is left out after the warm-up
MIN_SIZE_HIT_RATE = 0.02


@dataclass(frozen=True)
class PendingKeys:
    """Misses of one lookup worth storing: their positions ``coalitions`` ``(m,)`` among the
    looked-up coalitions, and their keys."""

    coalitions: np.ndarray
    keys: list[bytes]


class CoalitionValueCache:
    """Values ``(K,)`` of coalitions ``(S, x_S)`` seen before, for ``n_players`` players.

    ``column_player``: ``(D,)`` the player of each column.
    """

    def __init__(self, column_player: np.ndarray, width: int, max_bytes: int) -> None:
        self.n_players = int(column_player.max()) + 1
        self._columns = [np.flatnonzero(column_player == p) for p in range(self.n_players)]
        self.width = int(width)
        self.max_bytes = int(max_bytes)
        self.clear()

    def clear(self) -> None:
        """Forget every value and count (also what a pickled copy starts with)."""
        self._player_ids: list[dict[bytes, int]] = [{} for _ in range(self.n_players)]
        self._index: dict[bytes, int] = {}
        self._values = np.empty((1024, self.width))
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False
        self.instances = 0
        self._size_lookups = np.zeros(self.n_players + 1, dtype=np.int64)
        self._size_hits = np.zeros(self.n_players + 1, dtype=np.int64)
        self._warm_sizes = np.ones(self.n_players + 1, dtype=bool)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_player_ids"], state["_index"], state["_values"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.clear()

    def _keys(self, x: np.ndarray, masks: np.ndarray) -> list[bytes]:
        """The key of each coalition of ``masks`` ``(S, M)`` bool for instance ``x`` ``(D,)``."""
        ids = np.empty(self.n_players, dtype=np.int64)
        for p, columns in enumerate(self._columns):
            known = self._player_ids[p]
            values = x[columns].tobytes()
            found = known.get(values)
            if found is None:
                # once full, an unseen value gets an id no stored key holds (nothing is stored)
                found = len(known)
                if not self.full:
                    known[values] = found
                    self._bytes += len(values) + sys.getsizeof(b"") + _ENTRY_OVERHEAD_BYTES
            ids[p] = found + 1
        dtype = np.uint16 if ids.max() < 2**16 else np.uint32 if ids.max() < 2**32 else np.uint64
        packed = np.where(masks, ids.astype(dtype), dtype(0)).tobytes()
        width = self.n_players * np.dtype(dtype).itemsize
        return [packed[i : i + width] for i in range(0, len(packed), width)]

    def lookup(self, x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, "PendingKeys"]:
        """The coalitions of ``masks`` ``(S, M)`` bool for instance ``x`` ``(D,)`` seen before.

        Returns ``hit`` ``(S,)`` bool, ``values`` ``(S, K)`` (rows of misses undefined) and the
        keys of the misses worth storing, for :meth:`store`.
        """
        sizes = masks.sum(axis=1)
        looked = np.flatnonzero(self._warm_sizes[sizes])
        keys = self._keys(x, masks[looked])
        get = self._index.get
        where = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        found = where >= 0
        self._size_lookups += np.bincount(sizes[looked], minlength=self.n_players + 1)
        self._size_hits += np.bincount(sizes[looked[found]], minlength=self.n_players + 1)
        self.instances += 1
        if self.instances == WARMUP_INSTANCES:
            self._warm_sizes &= self._size_hits >= MIN_SIZE_HIT_RATE * np.maximum(self._size_lookups, 1)
        n_hits = int(found.sum())
        self.hits += n_hits
        self.misses += len(masks) - n_hits
        hit = np.zeros(len(masks), dtype=bool)
        hit[looked[found]] = True
        values = np.empty((len(masks), self.width))
        values[looked[found]] = self._values[where[found]]
        missed = np.flatnonzero(~found)
        return hit, values, PendingKeys(looked[missed], [keys[i] for i in missed.tolist()])

    def store(self, pending: "PendingKeys", missing: np.ndarray, computed: np.ndarray) -> None:
        """Keep the values of ``pending``'s coalitions, while there is room.

        ``missing`` ``(m,)``: the coalitions that were computed (every miss, in order), and
        ``computed`` ``(m, K)`` their values.
        """
        keys = pending.keys
        if self.full or not keys:
            return
        values = computed[np.searchsorted(missing, pending.coalitions)]
        size = len(keys[0]) + sys.getsizeof(b"") + 8 * self.width + _ENTRY_OVERHEAD_BYTES
        room = max(0, (self.max_bytes - self._bytes) // size)
        if room < len(keys):
            self.full = True
            keys, values = keys[:room], values[:room]
        n = len(self._index)
        while n + len(keys) > len(self._values):
            self._values = np.concatenate([self._values, np.empty_like(self._values)])
        self._values[n : n + len(keys)] = values
        self._index.update(zip(keys, range(n, n + len(keys))))
        self._bytes += size * len(keys)

    @property
    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, entries, bytes (estimated), max_bytes and whether it is full."""
        looked = self.hits + self.misses
        return dict(
            hits=self.hits, misses=self.misses, hit_rate=self.hits / looked if looked else 0.0,
            entries=len(self._index), bytes=self._bytes, max_bytes=self.max_bytes, full=self.full,
            sizes_left_out=np.flatnonzero(~self._warm_sizes).tolist(),
        )
