"""Coalition values shared across instances (``KernelShap(reuse_coalitions=True)``).

A coalition's value ``mean_b f(x_S, B_b)`` depends on ``x`` only through ``x_S``, its values
on the columns of the players in ``S``. Once computed for one instance it holds for every
later instance that agrees with it there. The cache maps ``(S, x_S)`` to the value.

A key is ``M`` small integers: per player 0 if the player is outside ``S`` and else 1 + the
id of ``x``'s values on its columns (ids given in order of first sight). Keys are found
through an open-addressing hash table held in NumPy arrays, probed by compiled (numba) loops,
so that one instance's thousands of coalitions cost a few microseconds of Python, not one
dictionary operation each. A key's 64-bit hash (the XOR of a SplitMix64 hash of each of its
``(player, id)``) only chooses where to look: a hit also needs the whole key to be equal, so
two keys that share a hash can cost a probe but never give a wrong value.

The cache holds at most ``max_bytes`` (its arrays as allocated, and the ids' dictionaries);
once full it keeps what it has and adds nothing. Coalition sizes whose hit rate over the first
``WARMUP_INSTANCES`` instances is below ``MIN_SIZE_HIT_RATE`` (typically the large
coalitions, whose ``x_S`` is nearly unique) are then neither looked up nor stored.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from explainers.kernelshap.kernel_arguments import check_writable, read_only

#: default of ``KernelShap(reuse_cache_bytes=...)``: per engine, i.e. per worker
DEFAULT_REUSE_CACHE_BYTES = 256 * 2**20
#: what one entry of a player's id dictionary costs besides its key's bytes
ID_ENTRY_OVERHEAD_BYTES = 100
#: instances after which coalition sizes that rarely hit are no longer looked up nor stored
WARMUP_INSTANCES = 16
#: the hit rate below which a coalition size is left out after the warm-up
MIN_SIZE_HIT_RATE = 0.02
#: entries allocated at the first store
INITIAL_ENTRIES = 4096
#: the hash table is grown once it is this full (linear probing stays short below it)
MAX_LOAD = 0.5

_EMPTY = -1


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of each ``uint64`` of ``z`` (any shape): a well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _find_coalitions(
    masks: np.ndarray, looked: np.ndarray, ids: np.ndarray, player_hashes: np.ndarray, table: np.ndarray,
    entry_hashes: np.ndarray, entry_keys: np.ndarray, found: np.ndarray, hashes: np.ndarray,
) -> None:
    """For each coalition ``looked[i]`` of ``masks``: its hash into ``hashes[i]`` and its entry
    (or -1) into ``found[i]``, probing from the hash's slot until the whole key or an empty slot."""
    n_players = masks.shape[1]
    slot_mask = table.shape[0] - 1
    for i in range(looked.shape[0]):
        s = looked[i]
        h = np.uint64(0)
        for p in range(n_players):
            if masks[s, p]:
                h ^= player_hashes[p]
        hashes[i] = h
        found[i] = -1
        slot = np.int64(h & np.uint64(slot_mask))
        while table[slot] != _EMPTY:
            e = table[slot]
            if entry_hashes[e] == h:
                same = True
                for p in range(n_players):
                    if entry_keys[e, p] != (ids[p] if masks[s, p] else 0):
                        same = False
                        break
                if same:
                    found[i] = e
                    break
            slot = (slot + 1) & slot_mask


@numba.njit(cache=True, nogil=True)
def _place_entries(table: np.ndarray, entry_hashes: np.ndarray, first: int, stop: int) -> None:
    """Put entries ``first:stop`` (distinct keys, none in the table) into the hash table."""
    slot_mask = table.shape[0] - 1
    for e in range(first, stop):
        slot = np.int64(entry_hashes[e] & np.uint64(slot_mask))
        while table[slot] != _EMPTY:
            slot = (slot + 1) & slot_mask
        table[slot] = e


@dataclass(frozen=True)
class PendingKeys:
    """Misses of one lookup worth storing: their positions ``coalitions`` ``(m,)`` among the
    looked-up coalitions, their keys ``(m, M)`` and hashes ``(m,)``."""

    coalitions: np.ndarray
    keys: np.ndarray
    hashes: np.ndarray


class CoalitionValueCache:
    """Values ``(K,)`` of coalitions ``(S, x_S)`` seen before, for ``n_players`` players.

    ``column_player``: ``(D,)`` the player of each column; ``width``: ``K``.
    """

    def __init__(self, column_player: np.ndarray, width: int, max_bytes: int) -> None:
        self.n_players = int(column_player.max()) + 1
        self._columns = [np.flatnonzero(column_player == p) for p in range(self.n_players)]
        self.width = int(width)
        self.max_bytes = int(max_bytes)
        self.clear()
        self._compile_kernels()

    def clear(self) -> None:
        """Forget every value and count (also what a pickled copy starts with)."""
        self._player_ids: list[dict[bytes, int]] = [{} for _ in range(self.n_players)]
        self._ids_bytes = 0
        # nothing is allocated before the first store (one empty slot ends every probe)
        self._table = np.full(1, _EMPTY, dtype=np.int64)
        self._hashes = np.empty(0, dtype=np.uint64)
        self._keys = np.empty((0, self.n_players), dtype=np.uint16)
        self._values = np.empty((0, self.width))
        self.entries = 0
        self.hits = 0
        self.misses = 0
        self.full = False
        self.instances = 0
        self._size_lookups = np.zeros(self.n_players + 1, dtype=np.int64)
        self._size_hits = np.zeros(self.n_players + 1, dtype=np.int64)
        self._warm_sizes = np.ones(self.n_players + 1, dtype=bool)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_player_ids", "_table", "_hashes", "_keys", "_values"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.clear()
        self._compile_kernels()  # in a worker: when it receives the engine, not in its first timed call

    def _compile_kernels(self) -> None:
        """Compile (or load from numba's cache) the probing loops, on an empty table."""
        self.lookup(np.zeros(sum(len(c) for c in self._columns)), np.zeros((1, self.n_players), dtype=bool))
        self._place(0, 0)
        self.clear()

    @property
    def nbytes(self) -> int:
        """The memory the cache holds: its arrays as allocated and its id dictionaries."""
        arrays = self._table.nbytes + self._hashes.nbytes + self._keys.nbytes + self._values.nbytes
        return arrays + self._ids_bytes

    # ----------------------------------------------------------------- keys
    def _player_value_ids(self, x: np.ndarray) -> np.ndarray:
        """``(M,)`` 1 + the id of ``x``'s values on each player's columns."""
        ids = np.empty(self.n_players, dtype=np.int64)
        for p, columns in enumerate(self._columns):
            known = self._player_ids[p]
            values = x[columns].tobytes()
            found = known.get(values)
            if found is None:
                # once full, an unseen value gets an id no stored key holds (nothing is stored)
                found = len(known)
                cost = len(values) + sys.getsizeof(b"") + ID_ENTRY_OVERHEAD_BYTES
                if not self.full and self.nbytes + cost > self.max_bytes:
                    self.full = True
                if not self.full:
                    known[values] = found
                    self._ids_bytes += cost
            ids[p] = found + 1
        return ids

    def _player_hashes(self, ids: np.ndarray) -> np.ndarray:
        """``(M,)`` the hash of each ``(player, id)``; a key's hash is the XOR over its players."""
        return splitmix64((np.arange(self.n_players, dtype=np.uint64) << np.uint64(40)) ^ ids.astype(np.uint64))

    def _place(self, first: int, stop: int) -> None:
        """Put entries ``first:stop`` (distinct keys, none in the table) into the hash table."""
        check_writable("table", self._table, np.int64)
        _place_entries(self._table, read_only(self._hashes, np.uint64), int(first), int(stop))

    def _table_slots_for(self, capacity: int) -> int:
        """Hash-table slots for ``capacity`` entries: a power of two, at most ``MAX_LOAD`` full."""
        slots = len(self._table)
        while capacity > MAX_LOAD * slots:
            slots *= 2
        return slots

    def _bytes_at(self, capacity: int) -> int:
        """:attr:`nbytes` once the arrays hold ``capacity`` entries."""
        per_entry = self._hashes.itemsize + self._keys.itemsize * self.n_players + 8 * self.width
        return self._table_slots_for(capacity) * self._table.itemsize + capacity * per_entry + self._ids_bytes

    def _room_for(self, n_new: int) -> int:
        """How many of ``n_new`` more entries fit, the arrays grown (by doubling) within ``max_bytes``."""
        capacity = len(self._hashes)
        if self.entries + n_new > capacity:
            target = max(self.entries + n_new, 2 * capacity, INITIAL_ENTRIES)
            while target > capacity and self._bytes_at(target) > self.max_bytes:
                target = capacity + (target - capacity) // 2
            if target > capacity:
                self._grow(target)
        return min(n_new, len(self._hashes) - self.entries)

    def _grow(self, capacity: int) -> None:
        n = self.entries
        for name in ("_hashes", "_keys", "_values"):
            old = getattr(self, name)
            new = np.empty((capacity,) + old.shape[1:], dtype=old.dtype)
            new[:n] = old[:n]
            setattr(self, name, new)
        slots = self._table_slots_for(capacity)
        if slots != len(self._table):
            self._table = np.full(slots, _EMPTY, dtype=np.int64)
            self._place(0, n)

    # ----------------------------------------------------------------- public API
    def lookup(self, x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, PendingKeys]:
        """The coalitions of ``masks`` ``(S, M)`` bool (distinct) for instance ``x`` ``(D,)`` seen before.

        Returns ``hit`` ``(S,)`` bool, ``values`` ``(S, K)`` (rows of misses undefined) and the
        keys of the misses worth storing, for :meth:`store`.
        """
        sizes = masks.sum(axis=1)
        looked = np.flatnonzero(self._warm_sizes[sizes])
        ids = self._player_value_ids(x)
        if ids.max() > np.iinfo(self._keys.dtype).max:
            self._keys = self._keys.astype(np.uint32 if ids.max() < 2**32 - 1 else np.uint64)
        where = np.empty(len(looked), dtype=np.int64)
        hashes = np.empty(len(looked), dtype=np.uint64)
        _find_coalitions(read_only(masks, np.bool_), read_only(looked, np.int64), read_only(ids, np.int64),
                         read_only(self._player_hashes(ids), np.uint64), read_only(self._table, np.int64),
                         read_only(self._hashes, np.uint64), read_only(self._keys, self._keys.dtype), where, hashes)
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
        missed = looked[~found]
        keys = np.where(masks[missed], ids.astype(self._keys.dtype), self._keys.dtype.type(0))
        return hit, values, PendingKeys(missed, keys, hashes[~found])

    def store(self, pending: PendingKeys, missing: np.ndarray, computed: np.ndarray) -> None:
        """Keep the values of ``pending``'s coalitions, while there is room.

        ``missing`` ``(m,)``: the coalitions that were computed (every miss, in order), and
        ``computed`` ``(m, K)`` their values.
        """
        n_new = len(pending.coalitions)
        if self.full or not n_new:
            return
        room = self._room_for(n_new)
        if room < n_new:
            self.full = True
        if not room:
            return
        new = slice(self.entries, self.entries + room)
        self._hashes[new] = pending.hashes[:room]
        self._keys[new] = pending.keys[:room]
        self._values[new] = computed[np.searchsorted(missing, pending.coalitions[:room])]
        self.entries += room
        self._place(new.start, new.stop)

    @property
    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, entries, bytes, max_bytes, whether it is full, and the
        coalition sizes left out after the warm-up."""
        looked = self.hits + self.misses
        return dict(
            hits=self.hits, misses=self.misses, hit_rate=self.hits / looked if looked else 0.0,
            entries=self.entries, bytes=self.nbytes, max_bytes=self.max_bytes, full=self.full,
            sizes_left_out=np.flatnonzero(~self._warm_sizes).tolist(),
        )
