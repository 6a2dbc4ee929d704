"""Serial KernelSHAP against each Ray backend at 1 and 2 workers, in one run.

Reference workload, sampled mode (``nsamples="auto"``: 2072 coalitions), batch size 10.
Every backend's values are checked against serial (<= 1e-12) in every round.

Speedups are paired in time: before each of a backend's rounds (warm-up included), the
serial engine explains the same instances in this process, on one CPU, while the
backend's workers sit idle. ``speedup`` = the fastest of these serial rounds / the
backend's fastest round (``seconds``, pytest-benchmark's min), so both come from the same
minute of a shared machine whose speed drifts by 10% or more over a run;
``efficiency`` = speedup / workers. The ``serial`` benchmark is the baseline row.
``driver_cpu_seconds`` is this process's CPU time per call (all its threads: Serve's
router, Ray Data's executor), which competes with the workers for the machine's cores.
Where the workers run on this machine (a local cluster, the plain processes),
``machine_cpu_seconds`` splits the whole machine's CPU per call (median of the timed
rounds) into the workers', the driver's, Ray's own processes' (raylet, GCS, Serve's
controller, Ray Data's coordinating actors) and the rest's (``explainers.bench.machine_cpu``), and
``overhead_cpu_share`` is the driver's and Ray's share of what the call used: on two cores
that the workers fill, the time taken from them.

The ``processes`` rows (``extra_info["baseline"]``, no ``backend``: the report leaves them
out) run the same minibatches on plain spawned processes, no Ray, paired with serial the
same way: the machine's own ceiling (see ``explainers/bench/bare_processes.py``). The same plain
processes also run one round right after the serial round before each backend round on a
local cluster (a remote cluster's workers are not on this machine), so every backend round
has a ceiling round of the same minute too: each backend row records
``processes_seconds`` (the fastest of those), ``processes_speedup`` = ``serial_seconds`` /
``processes_seconds`` and ``vs_processes`` = speedup / processes_speedup, the share of that
ceiling the backend reached.

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
from explainers.bench.bare_processes import BareProcesses
from explainers.bench.machine_cpu import CpuPerRound, machine_cpu_summary
from explainers.bench.plugin import SerialExplainer, SerialRounds

N_INSTANCES = int(os.environ.get("BENCH_BACKENDS_INSTANCES", "256"))
ROUNDS = int(os.environ.get("BENCH_BACKENDS_ROUNDS", "3"))
WORKERS = [int(w) for w in os.environ.get("BENCH_BACKENDS_WORKERS", "1,2").split(",")]
BATCH_SIZE = 10
LINK = "logit"

CONFIGS = [("serial", None, 1)] + [
    (backend, mode, w)
    for backend, mode in [("processes", None), ("pool", None), ("data", None), ("serve", "ray"),
                          ("serve", "default")]
    for w in WORKERS
]


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


@pytest.fixture(scope="module")
def serial_engine(adult_workload) -> KernelShap:
    engine = KernelShap(adult_workload.model.predict_proba, **_kwargs(adult_workload))
    engine.explain(np.array(adult_workload.X_explain[:2]))  # imports, first BLAS calls: like the workers' start
    return engine


@pytest.fixture(scope="module")
def plain_processes(serial_engine, instances):
    """``workers`` -> started :class:`BareProcesses`, kept for the module and closed after it."""
    started: dict[int, BareProcesses] = {}

    def get(workers: int) -> BareProcesses:
        if workers not in started:
            started[workers] = BareProcesses(serial_engine, workers, BATCH_SIZE)  # closed below even if start fails
            started[workers].start(instances)
        return started[workers]

    try:
        yield get
    finally:
        for processes in started.values():
            processes.close()


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_backend(benchmark, request, config, adult_workload, serial_engine, instances, plain_processes):
    backend, mode, workers = config
    info: dict = {"serve_mode": mode, "workers": workers,
                  "batch_size": None if backend == "serial" else BATCH_SIZE,
                  "n_instances": len(instances), "nsamples": serial_engine.nsamples_,
                  "exact": serial_engine.exact}
    info.update({"baseline": "processes"} if backend == "processes" else {"backend": backend})
    benchmark.group = "backends"
    serial = SerialRounds(SerialExplainer(serial_engine), instances)  # one CPU, like each worker

    def time_paired_with_serial(explain, ceiling: BareProcesses | None = None, *, account_cpu: bool,
                                worker_pids: tuple[int, ...] = ()) -> None:
        """Time ``explain()``, a serial round (then a ``ceiling`` round, if given) before each of
        its rounds; every round's values are checked against serial before its time is kept.
        ``account_cpu`` (the workers are on this machine): also account the machine's CPU per
        call by role, between snapshots taken right before and right after each round, with
        ``worker_pids`` counted as workers besides our actors."""
        cpu_seconds: list[float] = []
        ceiling_seconds: list[float] = []

        def setup() -> None:
            serial()
            if ceiling is not None:
                t0 = time.perf_counter()
                ceiling.explain(instances)
                ceiling_seconds.append(time.perf_counter() - t0)

        machine_cpu = CpuPerRound(setup, worker_pids) if account_cpu else None

        def explain_and_check() -> np.ndarray:
            cpu0 = time.process_time()
            values = explain()
            cpu_seconds.append(time.process_time() - cpu0)
            diff = float(np.max(np.abs(values - serial.values)))
            info["max_abs_diff_vs_serial"] = diff
            assert diff <= 1e-12, f"{_id(config)} differs from serial by {diff:.3g}"
            return values

        benchmark.pedantic(explain_and_check, setup=machine_cpu or setup, rounds=ROUNDS, warmup_rounds=1,
                           iterations=1)
        info.update(serial_seconds=min(serial.seconds), serial_rounds=serial.seconds,
                    driver_cpu_seconds=min(cpu_seconds))
        if machine_cpu is not None:
            info.update(machine_cpu_summary(machine_cpu.finish()[1:]))  # [0]: the warm-up round
        if ceiling_seconds:
            info.update(processes_seconds=min(ceiling_seconds), processes_rounds=ceiling_seconds,
                        processes_speedup=min(serial.seconds) / min(ceiling_seconds))

    if backend == "serial":
        with threadpool_limits(limits=1):  # serial = one CPU, like each worker
            benchmark.pedantic(serial_engine.explain, args=(instances,), rounds=ROUNDS, iterations=1)
        info["serial_seconds"] = benchmark.stats.stats.min
    elif backend == "processes":
        t0 = time.perf_counter()
        processes = plain_processes(workers)
        info["startup_seconds"] = time.perf_counter() - t0
        time_paired_with_serial(lambda: processes.explain(instances), account_cpu=True, worker_pids=processes.pids)
    else:
        cluster = request.getfixturevalue("ray_cluster")
        if backend == "serve" and cluster.is_remote:
            pytest.skip("a Serve handle does not work over Ray Client: perf/test_scaling.py runs Serve "
                        "inside the cluster")
        from explainers import DistributedKernelShap

        explainer = DistributedKernelShap(adult_workload.model.predict_proba, **_kwargs(adult_workload),
                                          backend=backend, serve_mode=mode or "ray", workers=workers,
                                          batch_size=BATCH_SIZE, progress=False)
        t0 = time.perf_counter()
        with explainer:  # starts the pool actors / Serve replicas / Ray Data pipeline; removes them after
            info["startup_seconds"] = time.perf_counter() - t0
            # the plain processes run here: on a remote cluster they are no ceiling for its workers
            ceiling = None if cluster.is_remote else plain_processes(workers)
            time_paired_with_serial(lambda: explainer.explain(instances), ceiling,
                                    account_cpu=not cluster.is_remote)

    best = benchmark.stats.stats.min
    speedup = info["serial_seconds"] / best
    info.update(
        seconds=best,
        mean_seconds=benchmark.stats.stats.mean,
        ms_per_instance=1000 * best / len(instances),
        explanations_per_s=len(instances) / best,
        speedup=speedup,
        efficiency=speedup / workers,
        nodes_used=1,
    )
    if "processes_speedup" in info:
        info["vs_processes"] = speedup / info["processes_speedup"]
    benchmark.extra_info.update(info)
