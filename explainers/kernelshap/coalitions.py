"""Coalitions of players and their Shapley-kernel weights, and the constrained solve.

A *plan* is the set of coalitions an instance is evaluated on: a boolean matrix
``masks`` of shape ``(S, M)`` (row ``s`` says which of the ``M`` players take the
instance's values) and ``weights`` of shape ``(S,)``. The empty and the full coalition
are never in a plan: they give the base value and the model output, which the
efficiency constraint uses directly.

The budget rule is the one of ``shap.KernelExplainer``: coalition sizes are
enumerated completely, smallest (and their complements) first, while the budget
covers them; what is left is drawn at random in complementary pairs, duplicates
adding weight. The random part here draws from a generator the caller seeds, so
that an instance's coalitions depend on nothing but that seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb

import numpy as np

#: rows of random keys drawn at once while sampling coalitions (bounds the sampler's memory)
DRAW_BLOCK_ROWS = 4096
#: bytes per (coalition, player) cell that a plan takes at its peak (see :func:`plan_bytes`)
PLAN_BYTES_PER_CELL = 48
#: bytes per (coalition, model output) of coalition values, linked and centred copies included
VALUE_BYTES_PER_OUTPUT = 32


@dataclass(frozen=True)
class CoalitionPlan:
    """Coalitions and Shapley-kernel weights for ``n_players`` players.

    ``masks``: ``(S, M)`` bool; ``weights``: ``(S,)`` float64, positive.
    """

    masks: np.ndarray
    weights: np.ndarray

    @property
    def n_players(self) -> int:
        return self.masks.shape[1]

    def __len__(self) -> int:
        return self.masks.shape[0]


def max_coalitions(n_players: int) -> int:
    """Number of coalitions other than the empty and the full one: ``2**M - 2``."""
    return 2**n_players - 2


def _size_weights(n_players: int) -> tuple[np.ndarray, int, int]:
    """Shapley-kernel mass of each subset size ``1..ceil((M-1)/2)``, sizes paired with their complements.

    Returns ``(weight_vector, num_subset_sizes, num_paired_subset_sizes)``; the weights sum to one.
    """
    m = n_players
    num_subset_sizes = int(np.ceil((m - 1) / 2.0))
    num_paired = int(np.floor((m - 1) / 2.0))
    weight_vector = np.array([(m - 1.0) / (s * (m - s)) for s in range(1, num_subset_sizes + 1)])
    weight_vector[:num_paired] *= 2
    weight_vector /= weight_vector.sum()
    return weight_vector, num_subset_sizes, num_paired


@dataclass(frozen=True)
class _FixedPart:
    masks: np.ndarray
    weights: np.ndarray
    num_full_sizes: int
    samples_left: int


@lru_cache(maxsize=64)
def _fixed_part(n_players: int, nsamples: int) -> _FixedPart:
    """The completely enumerated subset sizes of a budget of ``nsamples`` coalitions."""
    m = n_players
    weight_vector, num_subset_sizes, num_paired = _size_weights(m)
    masks: list[np.ndarray] = []
    weights: list[float] = []
    samples_left = nsamples
    remaining = weight_vector.copy()
    num_full = 0
    for size in range(1, num_subset_sizes + 1):
        paired = size <= num_paired
        nsubsets = comb(m, size) * (2 if paired else 1)
        if samples_left * remaining[size - 1] / nsubsets < 1.0 - 1e-8:
            break
        num_full += 1
        samples_left -= nsubsets
        if remaining[size - 1] < 1.0:
            remaining /= 1.0 - remaining[size - 1]
        w = weight_vector[size - 1] / comb(m, size) / (2.0 if paired else 1.0)
        for members in combinations(range(m), size):
            mask = np.zeros(m, dtype=bool)
            mask[list(members)] = True
            masks.append(mask)
            weights.append(w)
            if paired:
                masks.append(~mask)
                weights.append(w)
    masks_arr = np.array(masks, dtype=bool).reshape(-1, m)
    masks_arr.setflags(write=False)
    weights_arr = np.array(weights, dtype=np.float64)
    weights_arr.setflags(write=False)
    return _FixedPart(masks_arr, weights_arr, num_full, samples_left)


def full_plan(n_players: int) -> CoalitionPlan:
    """Every coalition but the empty and the full one, with exact Shapley-kernel weights."""
    fixed = _fixed_part(n_players, max_coalitions(n_players))
    return CoalitionPlan(fixed.masks, fixed.weights)


def sampled_plan(n_players: int, nsamples: int, rng: np.random.Generator) -> CoalitionPlan:
    """A budget of ``nsamples`` coalitions: complete sizes first, then random complementary pairs.

    The random draws come from ``rng`` only. With ``nsamples >= 2**M - 2`` this is
    :func:`full_plan`.
    """
    m = n_players
    nsamples = min(nsamples, max_coalitions(m))
    fixed = _fixed_part(m, nsamples)
    weight_vector, num_subset_sizes, num_paired = _size_weights(m)
    if fixed.num_full_sizes == num_subset_sizes or fixed.samples_left <= 0:
        return CoalitionPlan(fixed.masks, fixed.weights)

    size_probs = weight_vector.copy()
    size_probs[:num_paired] /= 2  # each paired draw yields two coalitions
    size_probs = size_probs[fixed.num_full_sizes :]
    size_probs /= size_probs.sum()
    samples_left = fixed.samples_left
    n_draws = 4 * samples_left
    sizes = rng.choice(len(size_probs), n_draws, p=size_probs) + fixed.num_full_sizes + 1
    draws = np.empty((n_draws, m), dtype=bool)
    paired = sizes <= num_paired
    # The draws are made a budget's worth at a time, and the walk stops at the first stage in
    # which the budget runs out: the draws after it are never taken, and each block of keys is
    # the same stream as one draw of all of them, so the plan is the one all the draws give.
    drawn = 0
    while True:
        stage_stop = min(drawn + samples_left, n_draws)
        # A uniformly random subset of each size: the players with the `size` smallest keys,
        # drawn in blocks so that their float64 keys never take more than a block's memory.
        for start in range(drawn, stage_stop, DRAW_BLOCK_ROWS):
            stop = min(start + DRAW_BLOCK_ROWS, stage_stop)
            keys = rng.random((stop - start, m))
            size = sizes[start:stop]
            # the size-th smallest key bounds the subset: one sort, not the two of a rank
            threshold = np.sort(keys, axis=1)[np.arange(stop - start), size - 1]
            block = keys <= threshold[:, None]
            tied = np.flatnonzero(block.sum(axis=1) != size)  # equal keys (p ~ 1e-14 a row): by rank
            if tied.size:
                ranks = np.argsort(np.argsort(keys[tied], axis=1), axis=1)
                block[tied] = ranks < size[tied, None]
            draws[start:stop] = block
        drawn = stage_stop
        masks, counts, spent = take_draws(draws[:drawn], paired[:drawn], samples_left)
        if spent >= samples_left or drawn == n_draws:
            break

    random_weights = counts * (weight_vector[fixed.num_full_sizes :].sum() / counts.sum())
    return CoalitionPlan(
        np.concatenate([fixed.masks, masks]),
        np.concatenate([fixed.weights, random_weights]),
    )


def coalition_codes(masks: np.ndarray) -> np.ndarray:
    """One hashable, sortable code per coalition, for any number of players.

    ``masks``: ``(n, M)`` bool. Returns ``(n,)`` codes (the packed bits of each row, as a
    void scalar of ``ceil(M / 8)`` bytes): equal exactly when the coalitions are.
    """
    packed = np.ascontiguousarray(np.packbits(masks, axis=1))
    return packed.view(np.dtype((np.void, packed.shape[1]))).reshape(len(masks))


#: up to this many players a coalition is also an int64 (its bitmask), which sorts fast
_INT_KEY_MAX_PLAYERS = 62


def coalition_keys(masks: np.ndarray) -> np.ndarray:
    """Sortable keys, equal exactly when the coalitions are: ``(n,)`` int64 bitmasks up to
    ``_INT_KEY_MAX_PLAYERS`` players (sorting them is several times faster), else
    :func:`coalition_codes`. ``masks``: ``(n, M)`` bool."""
    if masks.shape[1] <= _INT_KEY_MAX_PLAYERS:
        return masks.astype(np.int64) @ (np.int64(1) << np.arange(masks.shape[1], dtype=np.int64))
    return coalition_codes(masks)


def take_draws(draws: np.ndarray, paired: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, int]:
    """shap's sampling loop, vectorised: walk the draws in order until ``budget`` coalitions are taken.

    ``draws``: ``(n, M)`` bool; ``paired``: ``(n,)``, whether a draw's complement is taken with it.
    A new coalition costs one (its complement, taken when budget is left, one more); a repeated
    one adds one to its weight and to its complement's. Returns the coalitions ``(S, M)``, each
    followed by its complement, their counts ``(S,)``, and the budget the draws spent (at least
    ``budget`` once it ran out: then more draws would change nothing).
    """
    _, first, inverse = np.unique(coalition_keys(draws), return_index=True, return_inverse=True)
    new = first[inverse] == np.arange(len(draws))
    cost = new * (1 + paired)
    spent_before = np.cumsum(cost) - cost
    taken = spent_before < budget  # the draws the loop gets to before the budget runs out
    with_complement = new & paired & taken & (spent_before + 1 < budget)
    counts_by_code = np.bincount(inverse[taken], minlength=len(first)).astype(np.float64)

    order = np.flatnonzero(new & taken)
    slots = 1 + with_complement[order]
    position = np.cumsum(slots) - slots
    n_out = int(slots.sum())
    masks = np.empty((n_out, draws.shape[1]), dtype=bool)
    counts = np.empty(n_out)
    masks[position] = draws[order]
    counts[position] = counts_by_code[inverse[order]]
    has = with_complement[order]
    masks[position[has] + 1] = ~draws[order[has]]
    counts[position[has] + 1] = counts_by_code[inverse[order[has]]]
    return masks, counts, int(cost.sum())


def plan_bytes(n_coalitions: int, n_players: int, n_outputs: int = 1) -> int:
    """An upper bound on the memory, in bytes, that a plan of ``n_coalitions`` takes while an
    instance is explained with it: its draws and masks, the float64 matrices of
    :func:`solve_operator` (design, weighted design, solution and operator; measured: 41 bytes
    per cell), and the coalition values of ``n_outputs`` model outputs."""
    return n_coalitions * (PLAN_BYTES_PER_CELL * n_players + VALUE_BYTES_PER_OUTPUT * n_outputs)


def solve_operator(plan: CoalitionPlan) -> tuple[np.ndarray, np.ndarray]:
    """The linear map from coalition values to Shapley values under the efficiency constraint.

    For centred coalition values ``y`` of shape ``(S, ...)`` (``link(E f(coalition)) - link(E f)``)
    and the total effect ``delta = link(f(x)) - link(E f)``, the weighted least-squares
    estimate with ``sum(phi) == delta`` is ``phi = A @ y + b * delta``.

    Returns ``A`` of shape ``(M, S)`` and ``b`` of shape ``(M,)``. The last player is
    eliminated through the constraint, as shap does.
    """
    z = plan.masks.astype(np.float64)
    last = z[:, -1]
    e = z[:, :-1] - last[:, None]
    we = plan.weights[:, None] * e
    gram = e.T @ we
    try:
        p = np.linalg.solve(gram, we.T)
    except np.linalg.LinAlgError:
        p = np.linalg.lstsq(np.sqrt(plan.weights)[:, None] * e, np.diag(np.sqrt(plan.weights)), rcond=None)[0]
    p_last = p @ last
    a = np.vstack([p, -p.sum(axis=0, keepdims=True)])
    b = np.concatenate([-p_last, [1.0 + p_last.sum()]])
    return a, b
