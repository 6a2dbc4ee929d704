"""Engine behaviour: determinism across splits, coalition plans, pickling and bad input."""
from __future__ import annotations

import pickle
from math import comb

import cloudpickle
import numpy as np
import pytest

from explainers import KernelShap
from explainers.kernelshap.coalitions import full_plan, sampled_plan, solve_operator, take_draws


@pytest.fixture(scope="module")
def linear_problem():
    """A logistic model on 10 columns in 5 groups, and 40 instances: ``(predict_proba, background, X, groups)``."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 10))
    y = (X[:, 0] - X[:, 3] + X[:, 7] * X[:, 8] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    groups = [[0, 1], [2], [3, 4, 5], [6, 9], [7, 8]]
    return model.predict_proba, X[:20], X[100:140], groups


def test_any_split_in_any_order_gives_identical_values(linear_problem):
    predict, background, X, groups = linear_problem
    engine = KernelShap(predict, background, groups=groups, link="logit", nsamples=12, seed=7)
    whole = engine.explain(X)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(X)), size=6, replace=False))
    pieces = list(zip(np.r_[0, cuts], np.r_[cuts, len(X)]))
    rng.shuffle(pieces)
    stitched = np.empty_like(whole)
    for start, stop in pieces:
        stitched[start:stop] = engine.explain(X[start:stop], offset=int(start))
    assert np.array_equal(stitched, whole)


def test_instances_differ_by_position_and_seed(linear_problem):
    """Sampling is keyed by (seed, position): the same row at another position or seed is sampled anew."""
    predict, background, X, groups = linear_problem
    engine = KernelShap(predict, background, groups=groups, link="logit", nsamples=12, seed=7)
    row = X[:1]
    assert not np.array_equal(engine.explain(row, offset=0), engine.explain(row, offset=1))
    other_seed = KernelShap(predict, background, groups=groups, link="logit", nsamples=12, seed=8)
    assert not np.array_equal(engine.explain(row), other_seed.explain(row))
    assert np.array_equal(engine.explain(row, offset=5), engine.explain(row, offset=5))


def test_chunking_does_not_change_values(linear_problem):
    predict, background, X, groups = linear_problem
    small = KernelShap(predict, background, groups=groups, nsamples=20, chunk_rows=7)
    large = KernelShap(predict, background, groups=groups, nsamples=20, chunk_rows=100_000)
    np.testing.assert_allclose(small.explain(X[:5]), large.explain(X[:5]), rtol=0, atol=1e-13)


def test_engine_survives_pickling(linear_problem):
    predict, background, X, groups = linear_problem
    engine = KernelShap(predict, background, groups=groups, link="logit", nsamples=15)
    clone = pickle.loads(cloudpickle.dumps(engine))
    assert np.array_equal(clone.explain(X[:4], offset=3), engine.explain(X[:4], offset=3))


def test_callback_counts_instances(linear_problem):
    predict, background, X, groups = linear_problem
    seen = []
    KernelShap(predict, background, groups=groups).explain(X[:6], callback=seen.append)
    assert sum(seen) == 6


def test_one_dimensional_instance_is_one_row(linear_problem):
    predict, background, X, groups = linear_problem
    engine = KernelShap(predict, background, groups=groups)
    assert np.array_equal(engine.explain(X[3]), engine.explain(X[3:4]))


def test_non_varying_group_gets_zero_in_sampled_mode(linear_problem):
    predict, background, X, groups = linear_problem
    background = background.copy()
    background[:, 2] = 0.25
    x = X[:1].copy()
    x[0, 2] = 0.25
    values = KernelShap(predict, background, groups=groups, nsamples=10).explain(x)
    assert values[0, 1, 0] == 0.0 and values[0, 1, 1] == 0.0


def test_full_plan_has_every_coalition_once():
    plan = full_plan(6)
    assert len(plan) == 2**6 - 2
    assert len({m.tobytes() for m in plan.masks}) == len(plan)
    sizes = plan.masks.sum(axis=1)
    for size in range(1, 6):  # Shapley kernel: weight of a coalition ~ (M-1) / (C(M,s) s (M-s))
        kernel = 5 / (comb(6, size) * size * (6 - size))
        np.testing.assert_allclose(plan.weights[sizes == size] / kernel, plan.weights[sizes == 1][0] / (5 / 6 / 5))


def test_sampled_plan_fills_budget_with_complete_sizes_first():
    rng = np.random.default_rng(0)
    plan = sampled_plan(12, 2072, rng)
    assert len(plan) <= 2072
    sizes = plan.masks.sum(axis=1)
    for size in (1, 2, 3):  # shap's rule: 24 + 132 + 440 = 596 coalitions enumerated, 1476 sampled
        assert (sizes[:596] == size).sum() == comb(12, size)
        assert (sizes[:596] == 12 - size).sum() == comb(12, size)
    assert set(np.unique(sizes[596:])) <= {4, 5, 6, 7, 8}
    assert len(plan) > 1900  # few duplicates: most of the budget buys distinct coalitions
    np.testing.assert_allclose(plan.weights.sum(), 1.0)


class _CoarseKeys:
    """A generator whose random keys repeat (rounded to 0.1), recording the sizes and keys drawn."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.sizes: np.ndarray | None = None
        self.keys: list[np.ndarray] = []

    def choice(self, *args, **kwargs):
        self.sizes = self.rng.choice(*args, **kwargs)
        return self.sizes

    def random(self, shape):
        self.keys.append(np.round(self.rng.random(shape), 1))
        return self.keys[-1]


def test_sampled_subsets_have_the_drawn_size_even_when_keys_tie():
    """Each random coalition is the players of its ``size`` smallest keys, ties broken by rank."""
    coarse = _CoarseKeys(3)
    plan = sampled_plan(9, 120, coarse)
    keys = np.concatenate(coarse.keys)
    assert (np.sort(keys, axis=1)[:, :-1] == np.sort(keys, axis=1)[:, 1:]).any()  # ties were drawn
    n_fixed = 18  # 120 of 510 coalitions of 9 players: sizes 1 and 8 enumerated, draws of sizes 2-7
    assert np.array_equal(np.sort(plan.masks[:n_fixed].sum(axis=1)), [1] * 9 + [8] * 9)
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    expected = ranks < (coarse.sizes[: len(keys)] + 2)[:, None]  # keys are drawn until the budget is met
    drawn = {row.tobytes() for row in expected} | {(~row).tobytes() for row in expected}
    assert all(row.tobytes() in drawn for row in plan.masks[n_fixed:])


def test_the_walk_over_draws_stops_where_the_budget_runs_out():
    """What lets ``sampled_plan`` draw a budget's worth at a time: once a prefix of the draws has
    spent the budget, the draws after it change nothing."""
    rng = np.random.default_rng(4)
    draws = rng.random((400, 5)) < 0.5  # 30 distinct coalitions: many repeats
    paired = rng.random(400) < 0.5
    for budget in (1, 7, 20, 31):
        everything = take_draws(draws, paired, budget)
        stops = [n for n in range(1, 401) if take_draws(draws[:n], paired[:n], budget)[2] >= budget]
        assert stops, "the budget is never spent"
        prefix = take_draws(draws[: stops[0]], paired[: stops[0]], budget)
        assert np.array_equal(prefix[0], everything[0]) and np.array_equal(prefix[1], everything[1])
    short = take_draws(draws[:3], paired[:3], 1000)
    assert short[2] < 1000 and len(short[0]) == short[2]  # not spent: every new draw (and complement) taken


def test_solve_operator_reproduces_additive_game():
    """If ``v(S) = sum of phi_i over S``, the fit recovers ``phi`` from any full-rank plan."""
    rng = np.random.default_rng(1)
    phi = rng.normal(size=9)
    plan = sampled_plan(9, 60, rng)
    a, b = solve_operator(plan)
    values = plan.masks.astype(float) @ phi
    np.testing.assert_allclose(a @ values + b * phi.sum(), phi, atol=1e-12)


# ---------------------------------------------------------------- bad input
def _engine(linear_problem, **kwargs):
    predict, background, _, groups = linear_problem
    return KernelShap(predict, background, groups=groups, **kwargs)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros((3, 9)), "has 9 columns, the background has 10"),
        (np.full((2, 10), np.nan), "NaN or inf"),
        (np.r_[np.zeros((1, 10)), np.full((1, 10), np.inf)], "first at row 1"),
        (np.zeros((0, 10)), "no rows"),
        (np.array([["a"] * 10]), "must be numeric"),
        (np.zeros((2, 2, 10)), "must be 2-D"),
        (np.array([[1j] * 10]), "real-valued"),
    ],
)
def test_bad_X(linear_problem, X, message):
    with pytest.raises(ValueError, match=message):
        _engine(linear_problem).explain(X)


def test_bad_background(linear_problem):
    predict, background, _, groups = linear_problem
    bad = background.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="background contains NaN"):
        KernelShap(predict, bad, groups=groups)


@pytest.mark.parametrize(
    "groups, message",
    [
        ([[0, 1], [1, 2], [3, 4, 5, 6, 7, 8, 9]], "column 1 is in groups 0 and 1"),
        ([[0, 1], [2, 3]], r"columns \[4, 5, 6, 7, 8, 9\] are in no group"),
        ([[0, 1, 2, 3, 4, 5, 6, 7, 8, 10]], "column 10, out of range"),
        ([[0, 1, 2, 3, 4, 5, 6, 7, 8, -1]], "column -1, out of range"),
        ([[0, 1.5]], "must be integers"),
        ([[]], "group 0 is empty"),
        ([], "groups is empty"),
    ],
)
def test_bad_groups(linear_problem, groups, message):
    predict, background, _, _ = linear_problem
    with pytest.raises(ValueError, match=message):
        KernelShap(predict, background, groups=groups)


def test_group_names_must_match(linear_problem):
    with pytest.raises(ValueError, match="2 group_names for 5 groups"):
        _engine(linear_problem, group_names=["a", "b"])


@pytest.mark.parametrize("kwargs, message", [
    ({"link": "probit"}, "unknown link 'probit'"),
    ({"nsamples": 1}, "nsamples must be >= 2"),
    ({"nsamples": 10.0}, "nsamples must be 'auto' or an int"),
    ({"nsamples": "all"}, "nsamples must be 'auto' or an int"),
    ({"seed": -1}, "seed must be a non-negative int"),
    ({"chunk_rows": 0}, "chunk_rows must be .auto. or a positive int"),
])
def test_bad_parameters(linear_problem, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _engine(linear_problem, **kwargs)


def test_model_returning_wrong_row_count(linear_problem):
    _, background, X, groups = linear_problem
    with pytest.raises(ValueError, match=r"predict returned shape \(1,\) for 20 rows"):
        KernelShap(lambda rows: np.zeros(1), background, groups=groups)


def test_model_changing_its_output_shape(linear_problem):
    _, background, X, groups = linear_problem
    calls = []

    def fickle(rows):
        calls.append(len(rows))
        return np.zeros(len(rows)) if len(calls) == 1 else np.zeros((len(rows), 2))

    with pytest.raises(ValueError, match=r"predict changed its output shape: .* \(rows,\) before"):
        # the engine calls the model when it is built (the chunk calibration) and when it explains
        KernelShap(fickle, background, groups=groups, row_strategy="dense").explain(X[:1])


def test_model_returning_non_numbers(linear_problem):
    _, background, _, groups = linear_problem
    with pytest.raises(ValueError, match="non-numeric output"):
        KernelShap(lambda rows: np.array(["x"] * len(rows)), background, groups=groups)


def test_predict_must_be_callable(linear_problem):
    _, background, _, groups = linear_problem
    with pytest.raises(ValueError, match="predict must be callable"):
        KernelShap("model", background, groups=groups)


def test_bad_offset(linear_problem):
    _, _, X, _ = linear_problem
    with pytest.raises(ValueError, match="offset must be a non-negative int"):
        _engine(linear_problem).explain(X[:1], offset=-3)
