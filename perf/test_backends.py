"""Serial KernelSHAP against each Ray backend at 1 and 2 workers, in one run.

Reference workload, sampled mode (``nsamples="auto"``: 2072 coalitions), batch size 10.
The serial engine runs first; every backend's ``extra_info`` holds its ``speedup``
(serial seconds / its seconds) and ``efficiency`` (speedup / workers) against that
serial run of the same session, and its values are checked against serial (<= 1e-12)
in every round. Ratios use each configuration's fastest round (``seconds``, pytest-
benchmark's min): on a shared machine, the round least disturbed by other work.

Every backend's workers (pool actors, Serve replicas, Ray Data's pipeline and its actor
pool) are started before timing (``DistributedKernelShap.start``) and their start-up is
recorded as ``startup_seconds``.

Environment: ``BENCH_BACKENDS_INSTANCES`` (default 256), ``BENCH_BACKENDS_ROUNDS``
(default 3), ``BENCH_BACKENDS_WORKERS`` (default ``1,2``). Quick check::

    BENCH_BACKENDS_INSTANCES=20 pytest perf/test_backends.py
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from explainers import KernelShap

N_INSTANCES = int(os.environ.get("BENCH_BACKENDS_INSTANCES", "256"))
ROUNDS = int(os.environ.get("BENCH_BACKENDS_ROUNDS", "3"))
WORKERS = [int(w) for w in os.environ.get("BENCH_BACKENDS_WORKERS", "1,2").split(",")]
BATCH_SIZE = 10
LINK = "logit"

CONFIGS = [("serial", None, 1)] + [
    (backend, mode, w)
    for backend, mode in [("pool", None), ("data", None), ("serve", "ray"), ("serve", "default")]
    for w in WORKERS
]

_results: dict[str, object] = {}


def _id(config: tuple) -> str:
    backend, mode, workers = config
    if backend == "serial":
        return "serial"
    label = backend if mode is None else f"{backend}-{mode}"
    return f"{label}-w{workers}-b{BATCH_SIZE}"


@pytest.fixture(scope="module")
def instances(adult_workload) -> np.ndarray:
    if N_INSTANCES > len(adult_workload.X_explain):
        raise pytest.UsageError(f"BENCH_BACKENDS_INSTANCES={N_INSTANCES}: at most {len(adult_workload.X_explain)}")
    return np.array(adult_workload.X_explain[:N_INSTANCES])


def _kwargs(workload) -> dict:
    return dict(background=workload.background, groups=workload.groups, group_names=workload.group_names,
                link=LINK, nsamples="auto", seed=0)


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_backend(benchmark, request, config, adult_workload, instances):
    backend, mode, workers = config
    predict = adult_workload.model.predict_proba
    info: dict = {"backend": backend, "serve_mode": mode, "workers": workers,
                  "batch_size": None if backend == "serial" else BATCH_SIZE,
                  "n_instances": len(instances), "nsamples": None, "exact": None}
    benchmark.group = "backends"

    if backend == "serial":
        engine = KernelShap(predict, **_kwargs(adult_workload))
        engine.explain(instances[:2])  # warm-up (imports, first BLAS calls), like the workers' start
        with threadpool_limits(limits=1):  # serial = one CPU, like each worker
            values = benchmark.pedantic(engine.explain, args=(instances,), rounds=ROUNDS, iterations=1)
        info.update(nsamples=engine.nsamples_, exact=engine.exact)
        _results["serial_values"] = values
        _results["serial_seconds"] = benchmark.stats.stats.min
    else:
        cluster = request.getfixturevalue("ray_cluster")
        if backend == "serve" and cluster.is_remote:
            pytest.skip("a Serve handle does not work over Ray Client: perf/test_scaling.py runs Serve "
                        "inside the cluster")
        from explainers import DistributedKernelShap

        serial_values = _results.get("serial_values")
        if serial_values is None:  # the serial benchmark was deselected: compute the reference
            with threadpool_limits(limits=1):
                serial_values = KernelShap(predict, **_kwargs(adult_workload)).explain(instances)
            _results["serial_values"] = serial_values
        explainer = DistributedKernelShap(predict, **_kwargs(adult_workload), backend=backend,
                                          serve_mode=mode or "ray", workers=workers,
                                          batch_size=BATCH_SIZE, progress=False)

        def explain_and_check() -> np.ndarray:  # a wrong answer fails before its time is kept
            values = explainer.explain(instances)
            diff = float(np.max(np.abs(values - serial_values)))
            info["max_abs_diff_vs_serial"] = diff
            assert diff <= 1e-12, f"{_id(config)} differs from serial by {diff:.3g}"
            return values

        t0 = time.perf_counter()
        with explainer:  # starts the pool actors / Serve replicas / Ray Data pipeline; removes them after
            info["startup_seconds"] = time.perf_counter() - t0
            benchmark.pedantic(explain_and_check, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        info.update(nsamples=explainer.nsamples_, exact=explainer.exact)

    best = benchmark.stats.stats.min
    serial_seconds = _results.get("serial_seconds")
    speedup = serial_seconds / best if serial_seconds else None
    info.update(
        seconds=best,
        mean_seconds=benchmark.stats.stats.mean,
        ms_per_instance=1000 * best / len(instances),
        explanations_per_s=len(instances) / best,
        speedup=speedup,
        efficiency=None if speedup is None else speedup / workers,
        nodes_used=1,
    )
    benchmark.extra_info.update(info)
