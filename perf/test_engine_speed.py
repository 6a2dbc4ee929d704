"""The serial engine against shap and against the floor, on the reference workload.

Per mode (sampled: 2072 coalitions, exact: all 4094) five benchmarks run on the same
instances, in this order: two floors (the model alone, called on as many synthetic rows as
the instances need: all of them, ``floor``, and only each coalition's distinct rows,
``floor-distinct``), ``shap.KernelExplainer(l1_reg=False)``, the engine, and the engine with
``reuse_coalitions=True``. The engine's ``extra_info`` holds the ratios to the others,
measured in the same run, the chunk size and row strategy it chose on this CPU, the model
rows it evaluated against naive (coalitions x background rows), and the peak memory of its
``explain`` (tracemalloc, which sees NumPy's allocations).

``ENGINE_BENCH_INSTANCES`` (default 64) sets the instance count, e.g. for a CI smoke.
"""
from __future__ import annotations

import os
import tracemalloc
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from explainers import KernelShap

N_INSTANCES = int(os.environ.get("ENGINE_BENCH_INSTANCES", "64"))
MODES = {"sampled": 2072, "exact": 4094}
#: distinct instances whose synthetic rows the floor cycles through (their size bounds its memory)
FLOOR_DISTINCT = 2

_means: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def instances(adult_workload):
    return adult_workload.X_explain[:N_INSTANCES]


def _engine(workload, nsamples: int, **kwargs) -> KernelShap:
    return KernelShap(
        workload.model.predict_proba, workload.background, groups=workload.groups,
        group_names=workload.group_names, link="logit", nsamples=nsamples, **kwargs,
    )


def _column_player(workload) -> np.ndarray:
    column_player = np.empty(workload.background.shape[1], dtype=np.intp)
    for player, columns in enumerate(workload.groups):
        column_player[list(columns)] = player
    return column_player


def _plan_masks(engine: KernelShap, index: int) -> np.ndarray:
    from explainers.kernelshap.coalitions import full_plan, sampled_plan

    m = engine.n_groups
    plan = full_plan(m) if engine.exact else sampled_plan(m, engine.nsamples_, np.random.default_rng([0, index]))
    return plan.masks


def _synthetic_rows(workload, x: np.ndarray, engine: KernelShap, index: int) -> np.ndarray:
    """All synthetic rows of one instance, C-ordered, as a user without the engine would build them."""
    column_masks = _plan_masks(engine, index)[:, _column_player(workload)]
    return np.where(column_masks[:, None, :], x, workload.background).reshape(-1, x.shape[0])


def _distinct_synthetic_rows(workload, x: np.ndarray, engine: KernelShap, index: int) -> np.ndarray:
    """Each coalition's distinct synthetic rows of one instance only, C-ordered."""
    from explainers.kernelshap.distinct_rows import DistinctRows

    column_player = _column_player(workload)
    masks = _plan_masks(engine, index)
    rows = DistinctRows(workload.background, column_player, max_cache_bytes=2**30).of(masks)
    coalition_of_row = np.repeat(np.arange(len(masks)), np.diff(rows.starts))
    column_masks = masks[coalition_of_row][:, column_player]
    return np.where(column_masks, x, workload.background[rows.rows])


@pytest.mark.parametrize("rows", ["all", "distinct"])
@pytest.mark.parametrize("mode", list(MODES))
def test_floor(benchmark, adult_workload, instances, mode, rows):
    engine = _engine(adult_workload, MODES[mode])
    build = _synthetic_rows if rows == "all" else _distinct_synthetic_rows
    blocks = [build(adult_workload, instances[i], engine, i) for i in range(FLOOR_DISTINCT)]
    predict = adult_workload.model.predict_proba

    def model_only():
        with threadpool_limits(limits=1):  # as the engine's own calls
            for i in range(len(instances)):
                predict(blocks[i % FLOOR_DISTINCT])

    benchmark.group = f"engine-{mode}"
    benchmark.extra_info.update(mode=mode, n_instances=len(instances), rows_per_instance=len(blocks[0]),
                                floor_rows=rows)
    benchmark.pedantic(model_only, rounds=2, warmup_rounds=0, iterations=1)
    _means[("floor" if rows == "all" else "floor-distinct", mode)] = benchmark.stats.stats.mean


@pytest.mark.parametrize("mode", list(MODES))
def test_shap(benchmark, adult_workload, instances, mode):
    shap = pytest.importorskip("shap")
    from shap.utils._legacy import DenseData

    data = DenseData(adult_workload.background, list(adult_workload.group_names),
                     [np.asarray(g) for g in adult_workload.groups])
    explainer = shap.KernelExplainer(adult_workload.model.predict_proba, data, link="logit")

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return explainer.shap_values(instances, nsamples=MODES[mode], l1_reg=False, silent=True)

    benchmark.group = f"engine-{mode}"
    benchmark.extra_info.update(mode=mode, n_instances=len(instances))
    benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
    _means[("shap", mode)] = benchmark.stats.stats.mean


@pytest.mark.parametrize("reuse", [False, True], ids=["default", "reuse"])
@pytest.mark.parametrize("mode", list(MODES))
def test_engine(benchmark, adult_workload, instances, mode, reuse):
    engine = _engine(adult_workload, MODES[mode])
    tracemalloc.start()
    try:
        values = engine.explain(instances)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(values).all()
    distinct, naive = engine.rows_per_instance(instances)

    def run():
        if not reuse:
            return engine.explain(instances)
        fresh = _engine(adult_workload, MODES[mode], reuse_coalitions=True)  # an empty cache each round
        out = fresh.explain(instances)
        run.stats = fresh.reuse_stats
        return out

    benchmark.group = f"engine-{mode}"
    result = benchmark.pedantic(run, rounds=3, warmup_rounds=0, iterations=1)
    if reuse:
        # which instance computes a value first can change its last bit
        assert np.abs(result - values).max() <= 1e-12
    else:
        assert np.array_equal(result, values)
    mean = benchmark.stats.stats.mean
    evaluated = distinct if engine.row_strategy_ == "distinct" else naive
    info = dict(
        mode=mode, n_instances=len(instances), nsamples=engine.nsamples_, exact=engine.exact,
        reuse_coalitions=reuse, ms_per_instance=1000 * mean / len(instances), peak_memory_mb=peak / 2**20,
        chunk_rows=engine.chunk_rows_, row_strategy=engine.row_strategy_,
        chunk_calibration_s=engine.chunk_choice_.calibration_s, cpu_kernel=engine.cpu_kernel_,
        naive_rows=naive, distinct_rows=distinct, distinct_rows_per_naive=distinct / naive,
    )
    if reuse:
        stats = run.stats
        info.update(reuse_hit_rate=stats["hit_rate"], reuse_cache_mb=stats["bytes"] / 2**20,
                    model_rows_per_naive=(evaluated / naive) * (1 - stats["hit_rate"]))
        if ("engine", mode) in _means:
            info["ratio_to_default_engine"] = mean / _means[("engine", mode)]
    else:
        info["model_rows_per_naive"] = evaluated / naive
        _means[("engine", mode)] = mean
    if ("shap", mode) in _means:
        info["speedup_vs_shap"] = _means[("shap", mode)] / mean
    if ("floor", mode) in _means:
        info["ratio_to_floor"] = mean / _means[("floor", mode)]
    if ("floor-distinct", mode) in _means:
        info["ratio_to_distinct_floor"] = mean / _means[("floor-distinct", mode)]
    benchmark.extra_info.update(info)
