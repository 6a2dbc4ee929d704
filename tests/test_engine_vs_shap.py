"""The engine against shap's KernelExplainer and against closed forms."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from explainers import KernelShap

shap = pytest.importorskip("shap")
from shap.utils._legacy import DenseData  # noqa: E402  (shap's own way to pass feature groups)

N_REFERENCE = 50


def shap_values(predict, background, X, *, groups=None, group_names=None, link="identity", nsamples):
    """shap.KernelExplainer(l1_reg=False) values as ``(n, M)`` or ``(n, M, K)``, and its expected value."""
    data = background
    if groups is not None:
        data = DenseData(background, list(group_names), [np.asarray(g) for g in groups])
    explainer = shap.KernelExplainer(predict, data, link=link)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = explainer.shap_values(X, nsamples=nsamples, l1_reg=False, silent=True)
    return np.asarray(values), explainer.expected_value


@pytest.fixture(scope="module")
def reference_exact(adult_workload):
    """shap's exact values for the first instances of the reference workload, computed once."""
    w = adult_workload
    X = w.X_explain[:N_REFERENCE]
    values, expected = shap_values(
        w.model.predict_proba, w.background, X, groups=w.groups, group_names=w.group_names,
        link="logit", nsamples=4094,
    )
    return X, values, np.asarray(expected)


def test_exact_matches_shap_on_reference_workload(adult_workload, reference_exact):
    w = adult_workload
    X, expected_values, expected_base = reference_exact
    engine = KernelShap(
        w.model.predict_proba, w.background, groups=w.groups, group_names=w.group_names,
        link="logit", nsamples=4094,
    )
    assert engine.exact
    values = engine.explain(X)
    assert values.shape == (N_REFERENCE, 12, 2) == expected_values.shape
    assert np.abs(values - expected_values).max() <= 1e-8
    assert np.abs(engine.expected_value - expected_base).max() <= 1e-8


def test_auto_budget_is_sampled_for_twelve_groups(adult_workload):
    w = adult_workload
    engine = KernelShap(w.model.predict_proba, w.background, groups=w.groups, link="logit")
    assert engine.nsamples_ == 2 * 12 + 2048
    assert not engine.exact


@pytest.mark.parametrize("link", ["identity", "logit"])
def test_efficiency(adult_workload, link):
    w = adult_workload
    engine = KernelShap(w.model.predict_proba, w.background, groups=w.groups, link=link, nsamples=500)
    X = w.X_explain[:5]
    values = engine.explain(X)
    fx = w.model.predict_proba(X)
    if link == "logit":
        fx = np.log(fx / (1 - fx))
    np.testing.assert_allclose(values.sum(axis=1), fx - engine.expected_value, rtol=0, atol=1e-10)


@pytest.mark.parametrize("nsamples", [4094, "auto", 300, 40])
def test_linear_closed_form(adult_workload, nsamples):
    """For a linear model and the identity link every budget recovers ``coef * (x - mean(bg))`` per group."""
    w = adult_workload
    engine = KernelShap(w.model.decision_function, w.background, groups=w.groups, nsamples=nsamples)
    X = w.X_explain[:20]
    values = engine.explain(X, offset=100)
    contributions = w.model.coef_[0] * (X - w.background.mean(axis=0))
    closed = np.stack([contributions[:, g].sum(axis=1) for g in w.groups], axis=1)
    assert values.shape == (20, 12)
    assert isinstance(engine.expected_value, float)
    assert np.abs(values - closed).max() <= 1e-9


def test_sampled_error_is_of_the_order_of_shaps(adult_workload, reference_exact):
    w = adult_workload
    X, exact, _ = reference_exact
    X, exact = X[:20], exact[:20]
    np.random.seed(0)  # shap samples from numpy's global generator
    shap_sampled, _ = shap_values(
        w.model.predict_proba, w.background, X, groups=w.groups, group_names=w.group_names,
        link="logit", nsamples=2072,
    )
    ours = KernelShap(w.model.predict_proba, w.background, groups=w.groups, link="logit").explain(X)
    shap_error = np.sqrt(np.mean((shap_sampled - exact) ** 2))
    our_error = np.sqrt(np.mean((ours - exact) ** 2))
    assert 0 < our_error
    assert shap_error / 3 <= our_error <= 3 * shap_error


def test_sampled_error_shrinks_with_budget(adult_workload, reference_exact):
    w = adult_workload
    X, exact, _ = reference_exact
    errors = []
    for nsamples in (100, 1000, 3500):
        engine = KernelShap(w.model.predict_proba, w.background, groups=w.groups, link="logit", nsamples=nsamples)
        errors.append(np.sqrt(np.mean((engine.explain(X[:20]) - exact[:20]) ** 2)))
    assert errors[0] > errors[1] > errors[2] > 0


def _small_problem(seed: int = 0, n_features: int = 7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, n_features))
    y = X[:, 0] * X[:, 1] + np.sin(X[:, 2]) + 0.5 * X[:, 3] + rng.normal(scale=0.1, size=400)
    return X, y


def test_tree_ensemble_matches_shap():
    from sklearn.ensemble import RandomForestClassifier

    X, y = _small_problem()
    model = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(X, y > 0)
    background = X[:30]
    values, expected = shap_values(model.predict_proba, background, X[300:310], nsamples=2**7 - 2)
    engine = KernelShap(model.predict_proba, background, nsamples=2**7 - 2)
    ours = engine.explain(X[300:310])
    assert ours.shape == (10, 7, 2) == values.shape
    assert np.abs(ours - values).max() <= 1e-8
    assert np.abs(engine.expected_value - np.asarray(expected)).max() <= 1e-10


def test_multi_output_regressor_matches_shap():
    from sklearn.neighbors import KNeighborsRegressor

    X, y = _small_problem(seed=1, n_features=6)
    targets = np.column_stack([y, X[:, 4] - X[:, 5], np.abs(X[:, 0])])
    model = KNeighborsRegressor(n_neighbors=5).fit(X, targets)
    groups, names = [[0, 1], [2], [3, 4], [5]], ["ab", "c", "de", "f"]
    background = X[:25]
    values, expected = shap_values(
        model.predict, background, X[350:358], groups=groups, group_names=names, nsamples=2**4 - 2
    )
    ours = KernelShap(model.predict, background, groups=groups, group_names=names, nsamples="auto").explain(
        X[350:358]
    )
    assert ours.shape == (8, 4, 3) == values.shape
    assert np.abs(ours - values).max() <= 1e-8
