"""The serial engine against shap and against the floor, on the reference workload.

Per mode (sampled: 2072 coalitions, exact: all 4094) three benchmarks run on the same
instances, in this order: the floor (the model alone, called on as many synthetic rows
as the instances need), ``shap.KernelExplainer(l1_reg=False)``, and the engine. The
engine's ``extra_info`` holds the ratios to the other two, measured in the same run, and
the peak memory of its ``explain`` (tracemalloc, which sees NumPy's allocations).

``ENGINE_BENCH_INSTANCES`` (default 64) sets the instance count, e.g. for a CI smoke.
"""
from __future__ import annotations

import os
import tracemalloc
import warnings

import numpy as np
import pytest

from explainers import KernelShap

N_INSTANCES = int(os.environ.get("ENGINE_BENCH_INSTANCES", "64"))
MODES = {"sampled": 2072, "exact": 4094}
#: distinct instances whose synthetic rows the floor cycles through (their size bounds its memory)
FLOOR_DISTINCT = 2

_means: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def instances(adult_workload):
    return adult_workload.X_explain[:N_INSTANCES]


def _engine(workload, nsamples: int) -> KernelShap:
    return KernelShap(
        workload.model.predict_proba, workload.background, groups=workload.groups,
        group_names=workload.group_names, link="logit", nsamples=nsamples,
    )


def _synthetic_rows(workload, x: np.ndarray, engine: KernelShap, index: int) -> np.ndarray:
    """All synthetic rows of one instance, C-ordered, as a user without the engine would build them."""
    from explainers.coalitions import full_plan, sampled_plan

    m = engine.n_groups
    plan = full_plan(m) if engine.exact else sampled_plan(m, engine.nsamples_, np.random.default_rng([0, index]))
    column_masks = plan.masks[:, engine._column_player]
    return np.where(column_masks[:, None, :], x, workload.background).reshape(-1, x.shape[0])


@pytest.mark.parametrize("mode", list(MODES))
def test_floor(benchmark, adult_workload, instances, mode):
    engine = _engine(adult_workload, MODES[mode])
    blocks = [_synthetic_rows(adult_workload, instances[i], engine, i) for i in range(FLOOR_DISTINCT)]
    predict = adult_workload.model.predict_proba

    def model_only():
        for i in range(len(instances)):
            predict(blocks[i % FLOOR_DISTINCT])

    benchmark.group = f"engine-{mode}"
    benchmark.extra_info.update(mode=mode, n_instances=len(instances), rows_per_instance=len(blocks[0]))
    benchmark.pedantic(model_only, rounds=2, warmup_rounds=0, iterations=1)
    _means[("floor", mode)] = benchmark.stats.stats.mean


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


@pytest.mark.parametrize("mode", list(MODES))
def test_engine(benchmark, adult_workload, instances, mode):
    engine = _engine(adult_workload, MODES[mode])
    tracemalloc.start()
    try:
        values = engine.explain(instances)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(values).all()

    benchmark.group = f"engine-{mode}"
    result = benchmark.pedantic(engine.explain, args=(instances,), rounds=3, warmup_rounds=0, iterations=1)
    assert np.array_equal(result, values)
    mean = benchmark.stats.stats.mean
    info = dict(
        mode=mode, n_instances=len(instances), nsamples=engine.nsamples_, exact=engine.exact,
        ms_per_instance=1000 * mean / len(instances), peak_memory_mb=peak / 2**20,
    )
    if ("shap", mode) in _means:
        info["speedup_vs_shap"] = _means[("shap", mode)] / mean
    if ("floor", mode) in _means:
        info["ratio_to_floor"] = mean / _means[("floor", mode)]
    benchmark.extra_info.update(info)
