"""The engine's guarantees against bad input: no silently wrong value (issue 20, items 1, 2 and 5).

- column names: a background and ``X`` that both carry names are matched by name;
- model output: NaN, inf, complex values, or a logit link outside (0, 1) are errors naming the row;
- players: any number of players the engine accepts (one, or more than 64), checked group
  types, and a bound on the memory a coalition budget may take.
"""
from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from explainers import KernelShap
from explainers.kernelshap.coalitions import full_plan, plan_bytes, sampled_plan, take_draws


@pytest.fixture(scope="module")
def frame_problem():
    """A logistic model fitted on a 6-column DataFrame: ``(predict_proba, background, X)``."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(11)
    columns = [f"c{j}" for j in range(6)]
    data = pd.DataFrame(rng.normal(size=(200, 6)) * np.arange(1, 7), columns=columns)
    y = (data["c0"] - data["c3"] + 0.3 * data["c5"] > 0).astype(int)
    model = LogisticRegression().fit(data.to_numpy(), y)
    return model.predict_proba, data.iloc[:15], data.iloc[100:104]


# ------------------------------------------------------------------ item 1: column identity
def test_reordered_dataframe_columns_are_matched_by_name(frame_problem):
    predict, background, X = frame_problem
    engine = KernelShap(predict, background, link="logit")
    reordered = X[list(X.columns[::-1])]
    assert np.array_equal(engine.explain(reordered), engine.explain(X))


def test_dataframe_with_other_column_names_is_refused(frame_problem):
    predict, background, X = frame_problem
    engine = KernelShap(predict, background)
    renamed = X.rename(columns={"c2": "age"})
    with pytest.raises(ValueError, match=r"X's columns do not match the background's.*missing \['c2'\].*unexpected \['age'\]"):
        engine.explain(renamed)


def test_background_with_duplicate_column_names_is_refused(frame_problem):
    predict, background, _ = frame_problem
    duplicated = background.set_axis(["a", "b", "a", "c", "d", "e"], axis=1)
    with pytest.raises(ValueError, match=r"background has duplicate column names \['a'\]"):
        KernelShap(predict, duplicated)


def test_positional_X_is_taken_in_background_column_order(frame_problem):
    """A plain array carries no names: its columns are taken in the background's order."""
    predict, background, X = frame_problem
    engine = KernelShap(predict, background)
    assert np.array_equal(engine.explain(X.to_numpy()), engine.explain(X))
    assert engine.feature_names_ == tuple(background.columns)


# ------------------------------------------------------------------ item 2: model output
def _output_problem():
    rng = np.random.default_rng(5)
    background = rng.normal(size=(10, 4))
    X = rng.normal(size=(3, 4)) + 2.0
    return background, X


def test_nan_output_names_the_instance_and_row():
    background, X = _output_problem()

    def predict(rows):
        out = 1.0 / (1.0 + np.exp(-rows.sum(axis=1)))
        out[rows[:, 2] > 2.5] = np.nan  # only rows holding x's column 2 of instance 1
        return out

    X[1, 2] = 3.0
    engine = KernelShap(predict, background)
    assert np.isfinite(engine.explain(X[:1])).all()
    with pytest.raises(ValueError, match=r"predict returned NaN for instance 1 .*coalition \d+, background row \d+"):
        engine.explain(X)


@pytest.mark.parametrize("strategy", ["shared", "distinct", "dense"])
def test_nan_output_names_the_coalition_and_background_row_it_came_from(strategy):
    """Past the first model call too: one coalition per call, so the row is in a later chunk."""
    background, X = _output_problem()
    background[7, 0] = 9.0  # only background row 7 has it: its class on column 0 is itself
    x = X[0]

    def predict(rows):
        out = np.full(len(rows), 0.5)
        out[(rows[:, 0] == 9.0) & (rows[:, 1] == x[1])] = np.nan  # row 7 with x on player 1, not on 0
        return out

    engine = KernelShap(predict, background, nsamples=14, chunk_rows=len(background), row_strategy=strategy)
    masks = full_plan(4).masks
    with pytest.raises(ValueError, match=r"instance 0 \(coalition (\d+), background row 7\)") as raised:
        engine.explain(x)
    # the named coalition's row with background row 7 is one that gives NaN (the shared
    # strategy names the first coalition that reads it, the others the first in plan order)
    coalition = int(re.search(r"coalition (\d+)", str(raised.value)).group(1))
    assert masks[coalition, 1] and not masks[coalition, 0]
    if strategy != "shared":
        assert coalition == int(np.flatnonzero(masks[:, 1] & ~masks[:, 0])[0]) > 0


def test_inf_output_of_the_background_is_refused():
    background, _ = _output_problem()
    with pytest.raises(ValueError, match=r"predict returned inf for background row 4"):
        KernelShap(lambda rows: np.where(np.arange(len(rows)) == 4, np.inf, 0.5), background)


def test_complex_output_is_refused():
    background, X = _output_problem()
    with pytest.raises(ValueError, match=r"predict returned complex output"):
        KernelShap(lambda rows: rows.sum(axis=1) + 1j, background)


def test_logit_link_outside_zero_one_is_refused():
    background, X = _output_problem()
    raw = lambda rows: rows.sum(axis=1)  # noqa: E731 (a margin, not a probability)
    with pytest.raises(ValueError, match=r"logit link needs model output in \(0, 1\)"):
        KernelShap(raw, background, link="logit").explain(X)


def test_logit_link_with_certain_instance_is_refused():
    """f(x) == 1 exactly has no finite logit: an error naming the instance, not an inf value."""
    background, X = _output_problem()
    predict = lambda rows: np.where(rows[:, 0] > 1.9, 1.0, 0.4)  # noqa: E731
    X[:, 0] = 0.0
    X[2, 0] = 5.0
    engine = KernelShap(predict, background, link="logit", nsamples=6)
    assert np.isfinite(engine.explain(X[:2])).all()
    with pytest.raises(ValueError, match=r"f\(x\) of instance 2 is \[1.0\]"):
        engine.explain(X)


# ------------------------------------------------------------------ item 5: players
def test_more_than_64_players_keep_distinct_coalitions():
    """Coalitions that differ only beyond player 63 are distinct: each keeps its own count."""
    m = 70
    draws = np.zeros((3, m), dtype=bool)
    draws[0, 64] = draws[1, 64] = draws[2, 65] = True
    masks, counts, _ = take_draws(draws, np.zeros(3, dtype=bool), budget=2)
    assert masks.shape == (2, m)
    assert masks[0, 64] and masks[1, 65] and masks.sum() == 2
    assert counts.tolist() == [2.0, 1.0]


def test_more_than_64_players_in_the_engine():
    rng = np.random.default_rng(2)
    m = 70
    background = rng.normal(size=(4, m))
    X = rng.normal(size=(2, m))
    weights = np.linspace(-1.0, 1.0, m)
    engine = KernelShap(lambda rows: rows @ weights, background, nsamples=600)
    phi = engine.explain(X)
    # an additive model: every coalition sample recovers its exact effects
    np.testing.assert_allclose(phi, weights * (X - background.mean(axis=0)), atol=1e-9)
    plan = sampled_plan(m, 600, np.random.default_rng([0, 0]))
    assert len(np.unique(plan.masks, axis=0)) == len(plan)


def test_one_player_gets_the_whole_effect():
    rng = np.random.default_rng(1)
    background = rng.normal(size=(8, 3))
    X = rng.normal(size=(4, 3))
    predict = lambda rows: np.tanh(rows).sum(axis=1)  # noqa: E731
    engine = KernelShap(predict, background, groups=[[0, 1, 2]])
    assert engine.exact
    phi = engine.explain(X)
    assert phi.shape == (4, 1)
    np.testing.assert_allclose(phi[:, 0], predict(X) - predict(background).mean(), rtol=0, atol=1e-12)
    one_column = KernelShap(lambda rows: rows[:, 0] ** 2, background[:, :1])
    np.testing.assert_allclose(one_column.explain(X[:, :1])[:, 0],
                               X[:, 0] ** 2 - (background[:, 0] ** 2).mean(), atol=1e-12)


@pytest.mark.parametrize(
    "groups, message",
    [
        (5, r"groups must be a list of lists of column indices, got int"),
        ({"a": [0, 1], "b": [2]}, r"got dict: for named groups pass groups=list\(d.values\(\)\)"),
        ("abc", r"got str"),
        ([0, 1, 2], r"group 0 must be a list of column indices, got int"),
        ([[0, 1], "2"], r"group 1 must be a list of column indices, got str"),
    ],
)
def test_group_types_are_checked(groups, message):
    background = np.zeros((3, 3))
    with pytest.raises(ValueError, match=message):
        KernelShap(lambda rows: rows.sum(axis=1), background, groups=groups)


def test_nsamples_above_the_memory_bound_is_refused():
    background = np.zeros((2, 100))
    with pytest.raises(ValueError, match=r"nsamples=100000 for 100 players needs about \d+ MB.*max_plan_bytes"):
        KernelShap(lambda rows: rows.sum(axis=1), background, nsamples=100_000, max_plan_bytes=2**28)


def test_one_instance_stays_within_the_memory_bound():
    """Peak memory of explaining one instance stays below the plan's bound (plus the chunk)."""
    rng = np.random.default_rng(4)
    m, nsamples = 100, 20_000
    background = rng.normal(size=(2, m))
    engine = KernelShap(lambda rows: rows.sum(axis=1), background, nsamples=nsamples, chunk_rows=4096)
    x = rng.normal(size=(1, m))
    tracemalloc.start()
    try:
        engine.explain(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    chunk_bytes = 2 * 8 * m * 4096
    assert peak <= plan_bytes(nsamples, m) + chunk_bytes
