"""The cache of coalition values reused across instances (``reuse_coalitions=True``): a key
is found only when all of it agrees, whatever the hashes; it grows within its bytes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from explainers.kernelshap import coalition_cache
from explainers.kernelshap.coalition_cache import CoalitionValueCache

#: every coalition of 3 players but the empty and the full one
MASKS = np.array([m for m in itertools.product([False, True], repeat=3) if 0 < sum(m) < 3])


def _explain(cache: CoalitionValueCache, x: np.ndarray, masks: np.ndarray, value_of) -> tuple[np.ndarray, np.ndarray]:
    """One instance as the engine does it: look up, compute the misses with ``value_of``, store."""
    hit, values, pending = cache.lookup(x, masks)
    missing = np.flatnonzero(~hit)
    computed = np.array([value_of(x, masks[s]) for s in missing]).reshape(len(missing), cache.width)
    values[missing] = computed
    cache.store(pending, missing, computed)
    return hit, values


def _value(x: np.ndarray, mask: np.ndarray) -> list[float]:
    """A value that depends on the coalition and on x on its players only."""
    return [float(np.sum(np.where(mask, x * (1 + np.arange(len(x))), 0.5 * np.arange(len(x)))))]


@pytest.mark.parametrize("hashes", ["mixed", "all-colliding"])
def test_a_value_is_reused_only_where_the_instances_agree_on_the_coalition(monkeypatch, hashes):
    if hashes == "all-colliding":  # every key gets hash 0: only the whole key can tell them apart
        monkeypatch.setattr(coalition_cache, "splitmix64", lambda z: np.zeros_like(z))
    cache = CoalitionValueCache(np.arange(3), width=1, max_bytes=2**20)
    first = np.array([1.0, 2.0, 3.0])
    hit, _ = _explain(cache, first, MASKS, _value)
    assert not hit.any()
    second = np.array([1.0, 5.0, 3.0])  # agrees with the first on players 0 and 2 only
    hit, values = _explain(cache, second, MASKS, _value)
    agrees = ~MASKS[:, 1]
    assert np.array_equal(hit, agrees)
    assert np.array_equal(values[:, 0], [_value(second, m)[0] for m in MASKS])
    hit, _ = _explain(cache, second, MASKS, _value)
    assert hit.all()
    assert cache.stats["entries"] == 2 * len(MASKS) - agrees.sum()


@pytest.mark.parametrize("max_bytes", [0, 20_000, 100_000, 2**24])
def test_the_cache_grows_within_its_bytes_and_keeps_what_it_stored(max_bytes):
    rng = np.random.default_rng(0)
    n_players = 6
    masks = np.array([m for m in itertools.product([False, True], repeat=n_players) if 0 < sum(m) < n_players])
    instances = rng.integers(0, 4, size=(300, n_players)).astype(float)
    cache = CoalitionValueCache(np.arange(n_players), width=1, max_bytes=max_bytes)
    empty_bytes = cache.nbytes
    for x in instances:
        _, values = _explain(cache, x, masks, _value)
        assert np.array_equal(values[:, 0], [_value(x, m)[0] for m in masks])
        assert cache.stats["bytes"] == cache.nbytes <= max(max_bytes, empty_bytes)
    stats = cache.stats
    assert stats["full"] == (max_bytes < 2**24)
    if max_bytes == 2**24:  # everything was kept: every coalition of every instance hits again
        hits_before = stats["hits"]
        for x in instances[:20]:
            hit, _, _ = cache.lookup(x, masks)
            assert hit.sum() == (~np.isin(masks.sum(axis=1), stats["sizes_left_out"])).sum()
        assert cache.stats["hits"] > hits_before


def test_a_player_with_more_values_than_uint16_holds_widens_the_keys():
    cache = CoalitionValueCache(np.arange(2), width=1, max_bytes=2**24)
    masks = np.array([[True, False], [False, True]])
    for _ in range(coalition_cache.WARMUP_INSTANCES):  # hits during the warm-up: size 1 stays looked up
        _explain(cache, np.array([0.0, 0.0]), masks, _value)
    for v in range(1, 2**16 + 10):  # gives player 0 more value ids than uint16 holds
        cache.lookup(np.array([float(v), 0.0]), masks[:1])
    x = np.array([float(2**16 + 5), 1.0])
    hit, _ = _explain(cache, x, masks, _value)
    assert not hit.any()
    hit, values = _explain(cache, x, masks, _value)
    assert hit.all() and np.array_equal(values[:, 0], [_value(x, m)[0] for m in masks])
    hit, _, _ = cache.lookup(np.array([0.0, 1.0]), masks)
    assert np.array_equal(hit, [True, True])
