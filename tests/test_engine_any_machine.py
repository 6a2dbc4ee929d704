"""The engine on any machine (issue 21): the same bits whatever the caller's threads, a chunk
size measured for the CPU, each distinct synthetic row once, and coalition values reused
across instances."""
from __future__ import annotations

import pickle
import time
import warnings

import cloudpickle
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from explainers import DistributedKernelShap, KernelShap
from explainers.kernelshap.chunking import CALIBRATION_BUDGET_S, CHUNK_ROW_CANDIDATES, ROW_STRATEGIES
from explainers.kernelshap.coalitions import full_plan
from explainers.kernelshap.distinct_rows import DistinctRows
from explainers.kernelshap.distributed import CpuKernelWarning
from explainers.kernelshap.threads import cpu_kernel

shap = pytest.importorskip("shap")


def adult_engine(w, **kwargs) -> KernelShap:
    kwargs.setdefault("nsamples", 4094)
    return KernelShap(w.model.predict_proba, w.background, groups=w.groups, group_names=w.group_names,
                      link="logit", **kwargs)


# ------------------------------------------------------------------ threads
def test_values_do_not_depend_on_the_callers_blas_threads(adult_workload):
    """Instance 120 of the Adult workload differed in its last bit at 2 BLAS threads (OpenBLAS
    splits the rows of a model call between threads) before the engine owned its threads."""
    engine = adult_engine(adult_workload)
    X = adult_workload.X_explain[100:140]
    with threadpool_limits(limits=1):
        one = engine.explain(X, offset=100)
    with threadpool_limits(limits=2):
        two = engine.explain(X, offset=100)
    default = engine.explain(X, offset=100)
    assert np.array_equal(one, two), [100 + i for i in range(len(X)) if not np.array_equal(one[i], two[i])]
    assert np.array_equal(one, default)


def test_model_threads_is_validated_and_none_leaves_the_callers_threads(adult_workload):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="model_threads must be a positive int or None"):
            adult_engine(adult_workload, model_threads=bad)
    engine = adult_engine(adult_workload, model_threads=None, chunk_rows=32768, row_strategy="dense")
    seen = []
    predict = adult_workload.model.predict_proba

    def spy(rows):
        from threadpoolctl import threadpool_info

        seen.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
        return predict(rows)

    engine.predict = spy
    with threadpool_limits(limits=2):
        engine.explain(adult_workload.X_explain[:1])
    assert set(seen) == {2}
    engine.model_threads = 1
    seen.clear()
    with threadpool_limits(limits=2):
        engine.explain(adult_workload.X_explain[:1])
    assert set(seen) == {1}


# ------------------------------------------------------------------ chunk size
def test_chunk_size_is_measured_once_per_problem_and_travels_with_the_engine(adult_workload):
    began = time.perf_counter()
    engine = adult_engine(adult_workload, nsamples=2072, seed=3)  # a problem no other test measured
    built = time.perf_counter() - began
    choice = engine.chunk_choice_
    assert choice.how == "calibrated"
    assert engine.chunk_rows_ in CHUNK_ROW_CANDIDATES and engine.row_strategy_ in ROW_STRATEGIES
    assert (engine.row_strategy_, engine.chunk_rows_) == min(choice.seconds_per_row, key=choice.seconds_per_row.get)
    assert {size for _, size in choice.seconds_per_row} == set(CHUNK_ROW_CANDIDATES)
    assert choice.calibration_s < CALIBRATION_BUDGET_S + 0.5 and built < CALIBRATION_BUDGET_S + 2.0
    again = adult_engine(adult_workload, nsamples=2072, seed=3)
    assert again.chunk_choice_ is choice  # engines built alike in one process compute alike
    for copy in (pickle.loads(cloudpickle.dumps(engine)),):
        assert (copy.chunk_rows_, copy.row_strategy_) == (engine.chunk_rows_, engine.row_strategy_)


def test_an_explicit_chunk_size_and_strategy_win(adult_workload):
    engine = adult_engine(adult_workload, chunk_rows=5000, row_strategy="distinct")
    assert (engine.chunk_rows_, engine.row_strategy_, engine.chunk_choice_.how) == (5000, "distinct", "given")
    with pytest.raises(ValueError, match="row_strategy must be 'auto' or one of"):
        adult_engine(adult_workload, row_strategy="sparse")
    with pytest.raises(ValueError, match="chunk_rows must be 'auto' or a positive int"):
        adult_engine(adult_workload, chunk_rows="big")


def test_values_do_not_depend_on_the_chunk_size(adult_workload):
    X = adult_workload.X_explain[:6]
    reference = adult_engine(adult_workload, chunk_rows=4096, row_strategy="dense").explain(X)
    for strategy in ROW_STRATEGIES:
        for rows in (4096, 65536):
            values = adult_engine(adult_workload, chunk_rows=rows, row_strategy=strategy).explain(X)
            assert np.abs(values - reference).max() <= 1e-12


# ------------------------------------------------------------------ distinct rows
def test_distinct_rows_are_the_classes_of_the_players_outside_the_coalition():
    rng = np.random.default_rng(0)
    background = rng.integers(0, 3, size=(40, 5)).astype(float)
    column_player = np.array([0, 0, 1, 2, 3])
    masks = rng.random((30, 4)) < 0.5
    rows = DistinctRows(background, column_player, max_cache_bytes=2**20).of(masks)
    for s, mask in enumerate(masks):
        outside = ~mask[column_player]
        reps = rows.rows[rows.starts[s]:rows.starts[s + 1]]
        counts = rows.counts[rows.starts[s]:rows.starts[s + 1]]
        expected = np.unique(background[:, outside], axis=0)
        assert len(reps) == len(expected) and counts.sum() == 40
        for rep, count in zip(reps, counts):
            same = (background[:, outside] == background[rep, outside]).all(axis=1)
            assert same.sum() == count and same.argmax() == rep


def test_distinct_rows_cache_is_bounded_and_still_right_when_full():
    rng = np.random.default_rng(1)
    background = rng.integers(0, 2, size=(30, 6)).astype(float)
    column_player = np.arange(6)
    masks = rng.random((50, 6)) < 0.5
    unbounded = DistinctRows(background, column_player, max_cache_bytes=2**30).of(masks)
    small = DistinctRows(background, column_player, max_cache_bytes=500)
    for _ in range(2):
        bounded = small.of(masks)
        assert small.cache_bytes <= 500
        for field in ("rows", "counts", "starts"):
            assert np.array_equal(getattr(bounded, field), getattr(unbounded, field))


def test_distinct_rows_are_stored_in_the_order_the_coalitions_come():
    """So that the compiled loops read a plan's representatives from the pools in sequence."""
    rng = np.random.default_rng(2)
    background = rng.integers(0, 3, size=(40, 5)).astype(float)
    column_player = np.array([0, 0, 1, 2, 3])
    masks = full_plan(4).masks[::-1]  # not the order of their keys
    rows = DistinctRows(background, column_player, max_cache_bytes=2**20).of(masks)
    assert np.array_equal(rows.begin, rows.starts[:-1])


def test_the_calibration_times_distinct_chunks_as_full_as_explain_fills_them(adult_workload):
    """A distinct chunk of ``chunk_rows`` holds up to that many model rows, not naive rows."""
    timed: list[tuple[str, int, int]] = []

    class Recording(KernelShap):
        def _coalition_values(self, x, index, masks, rows, buffers, chunk_rows, strategy):
            timed.append((strategy, chunk_rows, rows.n_rows))
            return super()._coalition_values(x, index, masks, rows, buffers, chunk_rows, strategy)

    w = adult_workload

    def predict(rows):  # a model of its own: no calibration made before in this process applies
        return w.model.predict_proba(rows)

    Recording(predict, w.background, groups=w.groups, link="logit", nsamples=4094, row_strategy="distinct")
    sizes = {(size, n_rows) for strategy, size, n_rows in timed if strategy == "distinct"}
    assert sizes
    for size, n_rows in sizes:
        assert size - len(w.background) < n_rows <= size, (size, n_rows)


def test_adult_distinct_rows_fraction(adult_workload):
    engine = adult_engine(adult_workload, row_strategy="shared")
    counts = engine.rows_per_instance(adult_workload.X_explain[:2])
    assert counts.naive == 2 * 4094 * 100
    assert counts.distinct / counts.naive == pytest.approx(0.754, abs=0.001)  # issue 21's count over all coalitions
    assert counts.model == counts.shared and counts.shared / counts.naive < 0.1


def _held_out_models():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, random_state=0)
    X = np.round(X, 1)  # repeated values, so that coalitions share background rows
    tree = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0).fit(X, y)
    return X, {"tree": tree, "mlp": mlp}


@pytest.mark.parametrize("model_name", ["tree", "mlp"])
@pytest.mark.parametrize("strategy", ROW_STRATEGIES)
@pytest.mark.parametrize("reuse", [False, True], ids=["no-reuse", "reuse"])
def test_held_out_models_match_shap_exact(model_name, strategy, reuse):
    X, models = _held_out_models()
    model = models[model_name]
    background = X[:25].copy()
    background[:, 0] = np.round(background[:, 0])  # heavy duplication on one column
    instances = np.vstack([X[200:206], X[200:203]])  # repeated instances: the cache must hit
    engine = KernelShap(model.predict_proba, background, link="logit", nsamples=62,
                        row_strategy=strategy, reuse_coalitions=reuse)
    assert engine.exact
    values = engine.explain(instances)
    explainer = shap.KernelExplainer(model.predict_proba, background, link="logit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(explainer.shap_values(instances, nsamples=62, l1_reg=False, silent=True))
    assert np.abs(values - expected).max() <= 1e-8
    if reuse:
        assert engine.reuse_stats["hits"] > 0


# ------------------------------------------------------------------ reuse
@pytest.mark.parametrize("nsamples", [4094, 2072], ids=["exact", "sampled"])
def test_reuse_agrees_with_the_default_within_1e_12(adult_workload, nsamples):
    X = adult_workload.X_explain[:48]
    default = adult_engine(adult_workload, nsamples=nsamples).explain(X)
    engine = adult_engine(adult_workload, nsamples=nsamples, reuse_coalitions=True)
    first, rest = engine.explain(X[:20]), engine.explain(X[20:], offset=20)  # later calls reuse too
    assert np.abs(np.concatenate([first, rest]) - default).max() <= 1e-12
    stats = engine.reuse_stats
    assert stats["hits"] > 0.1 * (stats["hits"] + stats["misses"]) and 0 < stats["bytes"] <= stats["max_bytes"]
    assert adult_engine(adult_workload, nsamples=nsamples).reuse_stats is None


def test_reuse_cache_is_bounded_and_a_pickled_copy_starts_empty(adult_workload):
    X = adult_workload.X_explain[:10]
    default = adult_engine(adult_workload).explain(X)
    engine = adult_engine(adult_workload, reuse_coalitions=True, reuse_cache_bytes=200_000)
    values = engine.explain(X)
    stats = engine.reuse_stats
    assert stats["full"] and stats["bytes"] <= 200_000
    assert np.abs(values - default).max() <= 1e-12
    copy = pickle.loads(cloudpickle.dumps(engine))
    assert copy.reuse_stats["entries"] == 0 and copy.reuse_stats["hits"] == 0
    with pytest.raises(ValueError, match="reuse_coalitions must be True or False"):
        adult_engine(adult_workload, reuse_coalitions="yes")


# ------------------------------------------------------------------ on Ray
BACKENDS = [
    dict(backend="pool"), dict(backend="data"),
    dict(backend="serve", serve_mode="ray"), dict(backend="serve", serve_mode="default"),
]


@pytest.mark.parametrize("config", BACKENDS, ids=lambda c: "-".join(c.values()))
def test_every_backend_reuses_coalitions_and_is_identical_to_serial_at_any_caller_threads(
        ray_session, adult_workload, config):
    w = adult_workload
    X = w.X_explain[:30]
    kwargs = dict(groups=w.groups, group_names=w.group_names, link="logit", nsamples=4094)
    with threadpool_limits(limits=2):  # the caller's threads do not matter
        serial = KernelShap(w.model.predict_proba, w.background, **kwargs).explain(X)
    explainer = DistributedKernelShap(w.model.predict_proba, w.background, workers=2, batch_size=5,
                                      progress=False, **kwargs, **config)
    with explainer:
        assert np.array_equal(explainer.explain(X), serial)
    reusing = DistributedKernelShap(w.model.predict_proba, w.background, workers=2, batch_size=5,
                                    progress=False, reuse_coalitions=True, **kwargs, **config)
    assert reusing.engine.reuse_coalitions
    with reusing:
        assert np.abs(reusing.explain(X) - serial).max() <= 1e-12
    # every worker reports its cache: summed over the two, hits, memory within the bound
    assert explainer.reuse_stats is None and 1 <= len(reusing.last_run["worker_counters"]) <= 2
    stats = reusing.reuse_stats
    assert stats["hits"] > 0 and 0 < stats["bytes"] <= stats["max_bytes"] <= 2 * reusing.engine.reuse_cache_bytes
    assert stats["hit_rate"] == stats["hits"] / (stats["hits"] + stats["misses"])
    assert 0 < reusing.model_rows_ < explainer.model_rows_


def test_a_worker_reports_the_counters_of_its_own_engine(ray_session, adult_workload):
    """One pool actor explains the minibatches in order: its counters are those of a serial
    engine explaining the same minibatches in the same order, exactly."""
    w = adult_workload
    X = w.X_explain[:30]
    kwargs = dict(groups=w.groups, link="logit", nsamples=4094, reuse_coalitions=True)
    serial = KernelShap(w.model.predict_proba, w.background, **kwargs)
    for start in range(0, len(X), 5):
        serial.explain(X[start:start + 5], offset=start)
    explainer = DistributedKernelShap(w.model.predict_proba, w.background, backend="pool", workers=1,
                                      batch_size=5, progress=False, **kwargs)
    with explainer:
        explainer.explain(X)
    expected = {k: v for k, v in serial.reuse_stats.items() if k != "sizes_left_out"}
    assert explainer.reuse_stats == expected
    assert explainer.model_rows_ == serial.model_rows_ > 0


def test_a_node_of_another_cpu_kernel_is_a_warning(ray_session, adult_workload):
    w = adult_workload
    explainer = DistributedKernelShap(w.model.predict_proba, w.background, groups=w.groups, link="logit",
                                      nsamples=64, workers=1, batch_size=5, progress=False)
    assert explainer.engine.cpu_kernel_ == cpu_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpuKernelWarning)
        with explainer:
            explainer.explain(w.X_explain[:5])
    assert list(explainer.last_run["cpu_kernels"].values()) == [cpu_kernel()]
    explainer.engine.cpu_kernel_ = "Some Other CPU | openblas SkylakeX"
    with pytest.warns(CpuKernelWarning, match="Some Other CPU.*runs 'AMD|Some Other CPU.*runs '"):
        with explainer:
            explainer.explain(w.X_explain[:5])


def test_the_engine_counts_the_rows_it_gives_the_model(adult_workload):
    X = adult_workload.X_explain[:3]
    engine = adult_engine(adult_workload, row_strategy="shared")
    assert engine.model_rows_ == 0  # the calibration's rows are not counted
    engine.explain(X)
    assert engine.model_rows_ == engine.rows_per_instance(X).model
    reusing = adult_engine(adult_workload, row_strategy="shared", reuse_coalitions=True)
    reusing.explain(X)
    first = reusing.model_rows_
    assert 0 < first < engine.model_rows_  # later instances found some values of earlier ones
    reusing.explain(X)
    assert reusing.model_rows_ == first  # the same instances again found every value


def test_shared_values_do_not_depend_on_the_chunk_size_bitwise(adult_workload):
    """Each coalition's total is summed pattern by pattern whatever the chunks (4096 rows: several
    chunks per instance, 65536: one). With a model
    whose output for a row does not depend on the rows beside it (a row-wise sum; a BLAS model's
    can, which is why values are a function of ``chunk_rows_``), 4096- and 65536-row chunks give
    the same bits."""
    w = adult_workload
    weights = np.linspace(-0.05, 0.05, w.background.shape[1])

    def row_wise(rows: np.ndarray) -> np.ndarray:
        return np.sum(rows * weights, axis=1)

    X = w.X_explain[:3]
    small, large = (KernelShap(row_wise, w.background, groups=w.groups, nsamples=4094, row_strategy="shared",
                               chunk_rows=rows) for rows in (4096, 65536))
    assert np.array_equal(small.explain(X), large.explain(X))


def test_thepattern_cache__of_exact_mode_changes_no_bit(adult_workload, monkeypatch):
    """Exact mode: every instance has the same coalitions, so what each background pattern met
    was worked out to be is kept for the next instances; the values are those without it, and a
    pickled engine (a worker's) starts without it."""
    from explainers.kernelshap import shared_rows

    w = adult_workload
    X = w.X_explain[:12]
    kw = dict(groups=w.groups, link="logit", nsamples=4094, row_strategy="shared", chunk_rows=32768)
    engine = KernelShap(w.model.predict_proba, w.background, **kw)
    first, again = engine.explain(X), engine.explain(X)
    assert engine.pattern_cache_.patterns > 0
    assert pickle.loads(cloudpickle.dumps(engine)).pattern_cache_ is None
    monkeypatch.setattr(shared_rows, "PATTERN_CACHE_MAX_PLAYERS", 0)
    plain = KernelShap(w.model.predict_proba, w.background, **kw)
    assert np.array_equal(first, plain.explain(X)) and np.array_equal(again, first)
    assert plain.pattern_cache_ is None


def test_totals_too_large_to_sum_by_pattern_are_summed_in_background_order(adult_workload, monkeypatch):
    """Where an instance's patterns could take more than PATTERN_BYTES, the totals are summed over
    the background rows in order: the same values to rounding, and again whatever the chunks."""
    from explainers.kernelshap import shared_rows

    w = adult_workload
    X = w.X_explain[:3]

    def engines() -> list:
        return [KernelShap(w.model.predict_proba, w.background, groups=w.groups, link="logit", nsamples=4094,
                           row_strategy="shared", chunk_rows=rows) for rows in (4096, 65536)]

    by_pattern = [e.explain(X) for e in engines()]
    monkeypatch.setattr(shared_rows, "PATTERN_BYTES", 0)
    in_order = [e.explain(X) for e in engines()]
    np.testing.assert_allclose(in_order[1], by_pattern[1], rtol=0, atol=1e-13)
    assert not np.array_equal(in_order[1], by_pattern[1])  # the other order: other last bits
    assert np.abs(in_order[0] - in_order[1]).max() <= 1e-13  # BLAS bits may move with the chunks
