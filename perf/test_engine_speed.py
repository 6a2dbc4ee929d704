"""The serial engine against shap and against the floor, on the session's workload.

Options: ``--workload``, ``--n-instances`` (by default ``ENGINE_N_INSTANCES``, fewer than the
other suites explain: shap and the all-rows floor take 50-200x the engine's time), ``--nsamples``
(the sampled mode's budget), ``--nruns``
(rounds of every benchmark). Fixed: the serial engine on one CPU (``--backends``, ``--workers``
and ``--batch-sizes`` do not apply); two modes, ``sampled`` (``--nsamples``) and ``exact`` (all
``2**M - 2`` coalitions; skipped above ``EXACT_MAX_PLAYERS`` players).

Per mode six benchmarks run on the same instances, in this order: three floors (the model
alone, called on as many synthetic rows as the instances need: all of them, ``floor``; only each
coalition's distinct rows, ``floor-distinct``; only each instance's distinct rows, which its
coalitions share, ``floor-shared``), ``shap.KernelExplainer(l1_reg=False)``, the engine, and the
engine with ``reuse_coalitions=True``. The engine's record holds its ratios to the others, each
paired in time: right before every timed round, one round of the other work runs (the
benchmark's ``setup``, untimed), and the ratio is the median over rounds of the two (a slow
minute slows both). shap's rounds are paired with rounds of the engine, the engine's with rounds
of the three floors, and the reusing engine's also with rounds of the default engine.
The record also holds the chunk size and row strategy the engine chose on this CPU, the model
rows it evaluated against naive (coalitions x background rows), and the peak memory of its
``explain`` (tracemalloc, which sees NumPy's allocations).
"""
from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from explainers.bench.factory import REUSE_TOLERANCE
from explainers.bench.grid import EXACT_MAX_PLAYERS, exact_nsamples
from explainers.bench.options import ENGINE_N_INSTANCES
from explainers.bench.pairing import TimedRounds, paired_ratio
from explainers.bench.records import BenchmarkRecord
from explainers.kernelshap.coalitions import full_plan, sampled_plan
from explainers.kernelshap.distinct_rows import DistinctRows
from explainers.kernelshap.engine import KernelShap

MODES = ("sampled", "exact")
#: distinct instances whose synthetic rows the floor cycles through (their size bounds its memory)
FLOOR_DISTINCT = 2

#: per mode, shap's time / the engine's, from shap's rounds paired with the engine's
_speedup_vs_shap: dict[str, float | None] = {}


@pytest.fixture(scope="module")
def explain_instances(kernelshap_ray) -> np.ndarray:
    """This suite's instances: the first ``--n-instances`` rows, by default ``ENGINE_N_INSTANCES``."""
    return kernelshap_ray.explain_instances(ENGINE_N_INSTANCES)


def _engine(explainer_factory, mode: str, **kwargs) -> KernelShap:
    """The engine of ``mode``; skips ``exact`` for a workload with too many players."""
    if mode == "exact":
        nsamples = exact_nsamples(explainer_factory.session.workload())
        if nsamples is None:
            pytest.skip(f"exact mode: more than {EXACT_MAX_PLAYERS} players")
        kwargs["nsamples"] = nsamples
    return KernelShap(**explainer_factory.engine_kwargs(**kwargs))


def _column_player(engine: KernelShap, n_columns: int) -> np.ndarray:
    column_player = np.empty(n_columns, dtype=np.intp)
    for player, columns in enumerate(engine.groups):
        column_player[list(columns)] = player
    return column_player


def _plan_masks(engine: KernelShap, index: int) -> np.ndarray:
    m = engine.n_groups
    plan = full_plan(m) if engine.exact else sampled_plan(m, engine.nsamples_, np.random.default_rng([0, index]))
    return plan.masks


def _synthetic_rows(workload, x: np.ndarray, engine: KernelShap, index: int) -> np.ndarray:
    """All synthetic rows of one instance, C-ordered, as a user without the engine would build them."""
    column_masks = _plan_masks(engine, index)[:, _column_player(engine, x.shape[0])]
    return np.where(column_masks[:, None, :], x, workload.background).reshape(-1, x.shape[0])


def _distinct_synthetic_rows(workload, x: np.ndarray, engine: KernelShap, index: int) -> np.ndarray:
    """Each coalition's distinct synthetic rows of one instance only, C-ordered."""
    column_player = _column_player(engine, x.shape[0])
    masks = _plan_masks(engine, index)
    rows = DistinctRows(workload.background, column_player, max_cache_bytes=2**30).of(masks)
    coalition_of_row = np.repeat(np.arange(len(masks)), np.diff(rows.starts))
    column_masks = masks[coalition_of_row][:, column_player]
    return np.where(column_masks, x, workload.background[rows.rows])


def _shared_synthetic_rows(workload, x: np.ndarray, engine: KernelShap, index: int) -> np.ndarray:
    """Each distinct synthetic row of one instance only (its coalitions share them), C-ordered:
    per background row, the distinct ``x`` / background choices on the players where they differ."""
    column_player = _column_player(engine, x.shape[0])
    masks = _plan_masks(engine, index)
    blocks = []
    for b in workload.background:
        differs = np.zeros(engine.n_groups, dtype=bool)
        np.logical_or.at(differs, column_player, b.view(np.int64) != x.view(np.int64))
        choices = np.unique(masks & differs, axis=0)
        blocks.append(np.where(choices[:, column_player], x, b))
    return np.concatenate(blocks)


_FLOOR_ROWS = {"all": _synthetic_rows, "distinct": _distinct_synthetic_rows, "shared": _shared_synthetic_rows}


def _record(workload, instances, engine: KernelShap, mode: str, role: str, **fields) -> dict:
    return BenchmarkRecord(suite="engine", workload=workload.name, mode=mode, engine_role=role,
                           n_instances=len(instances), nsamples=engine.nsamples_, exact=engine.exact,
                           **fields).to_extra_info()


def _floor(workload, instances, engine: KernelShap, rows: str) -> tuple[Callable[[], None], int]:
    """The model alone on the synthetic rows of ``instances`` (``rows``: all, distinct or shared), as
    the engine's own calls run it, and the rows it sees per instance."""
    build = _FLOOR_ROWS[rows]
    blocks = [build(workload, instances[i], engine, i) for i in range(min(FLOOR_DISTINCT, len(instances)))]
    predict = workload.predict

    def model_only() -> None:
        with threadpool_limits(limits=1):  # as the engine's own calls
            for i in range(len(instances)):
                predict(blocks[i % len(blocks)])

    return model_only, len(blocks[0])


@pytest.mark.parametrize("rows", list(_FLOOR_ROWS))
@pytest.mark.parametrize("mode", MODES)
def test_floor(benchmark, kernelshap_ray, workload, explainer_factory, explain_instances, mode, rows):
    instances = explain_instances
    engine = _engine(explainer_factory, mode)
    model_only, rows_per_instance = _floor(workload, instances, engine, rows)
    benchmark.group = f"engine-{mode}"
    benchmark.pedantic(model_only, rounds=kernelshap_ray.options.nruns, warmup_rounds=0, iterations=1)
    role = "floor" if rows == "all" else f"floor-{rows}"
    benchmark.extra_info.update(_record(workload, instances, engine, mode, role, floor_rows=rows,
                                        rows_per_instance=rows_per_instance, mean_seconds=benchmark.stats.stats.mean))


@pytest.mark.parametrize("mode", MODES)
def test_shap(benchmark, kernelshap_ray, workload, explainer_factory, explain_instances, mode):
    shap = pytest.importorskip("shap")
    from shap.utils._legacy import DenseData

    instances = explain_instances
    engine = _engine(explainer_factory, mode)
    data = DenseData(workload.background, list(engine.group_names), [np.asarray(g) for g in engine.groups])
    explainer = shap.KernelExplainer(workload.predict, data, link=workload.link)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return explainer.shap_values(instances, nsamples=engine.nsamples_, l1_reg=False, silent=True)

    engine_rounds = TimedRounds(lambda: engine.explain(instances))
    benchmark.group = f"engine-{mode}"
    benchmark.pedantic(run, setup=engine_rounds, rounds=kernelshap_ray.options.nruns, warmup_rounds=0, iterations=1)
    _speedup_vs_shap[mode] = paired_ratio(benchmark.stats.stats.data, engine_rounds.seconds)
    benchmark.extra_info.update(_record(workload, instances, engine, mode, "shap",
                                        mean_seconds=benchmark.stats.stats.mean))


@pytest.mark.parametrize("reuse", [False, True], ids=["default", "reuse"])
@pytest.mark.parametrize("mode", MODES)
def test_engine(benchmark, kernelshap_ray, workload, explainer_factory, explain_instances, mode, reuse):
    instances = explain_instances
    engine = _engine(explainer_factory, mode)
    tracemalloc.start()
    try:
        values = engine.explain(instances)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(values).all()
    counts = engine.rows_per_instance(instances)
    reuse_stats: dict = {}

    def run():
        if not reuse:
            return engine.explain(instances)
        fresh = _engine(explainer_factory, mode, reuse_coalitions=True)  # an empty cache each round
        out = fresh.explain(instances)
        reuse_stats.update(fresh.reuse_stats, model_rows=fresh.model_rows_)
        return out

    paired = {rows: TimedRounds(_floor(workload, instances, engine, rows)[0]) for rows in _FLOOR_ROWS}
    if reuse:
        paired["default"] = TimedRounds(lambda: engine.explain(instances))

    def other_rounds() -> None:
        for rounds in paired.values():
            rounds()

    benchmark.group = f"engine-{mode}"
    result = benchmark.pedantic(run, setup=other_rounds, rounds=kernelshap_ray.options.nruns, warmup_rounds=0,
                                iterations=1)
    if reuse:  # which instance computes a value first can change its last bit
        assert np.abs(result - values).max() <= REUSE_TOLERANCE
    else:
        assert np.array_equal(result, values)
    rounds = benchmark.stats.stats.data
    fields = dict(
        reuse_coalitions=reuse, mean_seconds=benchmark.stats.stats.mean, peak_memory_mb=peak / 2**20,
        chunk_rows=engine.chunk_rows_, row_strategy=engine.row_strategy_,
        chunk_calibration_s=engine.chunk_choice_.calibration_s, cpu_kernel=engine.cpu_kernel_,
        naive_rows=counts.naive, distinct_rows=counts.distinct, shared_rows=counts.shared,
        ratio_to_floor=paired_ratio(rounds, paired["all"].seconds),
        ratio_to_distinct_floor=paired_ratio(rounds, paired["distinct"].seconds),
        ratio_to_shared_floor=paired_ratio(rounds, paired["shared"].seconds),
    )
    if reuse:
        fields.update(reuse_hit_rate=reuse_stats["hit_rate"], reuse_cache_mb=reuse_stats["bytes"] / 2**20,
                      model_rows_per_naive=reuse_stats["model_rows"] / counts.naive,
                      ratio_to_default_engine=paired_ratio(rounds, paired["default"].seconds))
    else:
        fields["model_rows_per_naive"] = counts.model / counts.naive
        if _speedup_vs_shap.get(mode) is not None:
            fields["speedup_vs_shap"] = _speedup_vs_shap[mode]
    benchmark.extra_info.update(_record(workload, instances, engine, mode, "engine-reuse" if reuse else "engine",
                                        **fields))
