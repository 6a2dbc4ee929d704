"""Serial KernelSHAP against each Ray backend and against plain processes, in one run.

Options: ``--workload``, ``--backends``, ``--serve-modes``, ``--workers`` (every backend at each
count), ``--batch-sizes`` (the largest only: this file compares backends, ``test_scaling.py``
charts batch sizes), ``--reuse-coalitions`` (each backend also, or only, with reuse), ``--n-instances``,
``--nsamples``, ``--nruns`` (timed rounds, after one warm-up round), ``--progress``. Fixed: the
serial baseline and the plain processes always run; one CPU per worker, seed 0. Every backend's
values must equal serial bit for bit in every round (within ``REUSE_TOLERANCE`` with reuse).

Speedups are paired in time: before each of a backend's rounds (warm-up included), the
serial engine explains the same instances in this process, on one CPU, while the backend's
workers sit idle. ``speedup`` = the fastest of these serial rounds / the backend's fastest
round (``seconds``, pytest-benchmark's min); ``efficiency`` = speedup / workers.
``driver_cpu_seconds`` is this process's CPU time per call (all its threads: Serve's router, Ray
Data's executor). Where the workers run on this machine, ``machine_cpu_seconds`` splits the
whole machine's CPU per call into the workers', the driver's, Ray's own processes' and the
rest's (``explainers.bench.machine_cpu``), and ``overhead_cpu_share`` is the driver's and Ray's
share of what the call used.

The ``processes`` rows (``extra_info["baseline"]``, no ``backend``: the report leaves them out)
run the same minibatches on plain spawned processes, no Ray, paired with serial the same way:
the machine's own ceiling (``explainers.bench.bare_processes``). On a local cluster the same
processes also run one round after the serial round before each backend round, so each backend
row records ``processes_seconds``, ``processes_speedup`` and ``vs_processes`` = speedup /
processes_speedup, the share of that ceiling the backend reached in the same minutes.

    pytest perf/test_backends.py --n-instances 20 --nruns 1
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from explainers.bench.bare_processes import BareProcesses
from explainers.bench.factory import REUSE_TOLERANCE, FreshEachRound, assert_same_values
from explainers.bench.grid import PROCESSES, SERIAL
from explainers.bench.machine_cpu import CpuPerRound, machine_cpu_summary
from explainers.bench.pairing import SerialRounds
from explainers.bench.records import BenchmarkRecord


@pytest.fixture(scope="module")
def serial_engine(explainer_factory, explain_instances):
    """The serial engine on one CPU, warmed up (imports, first BLAS calls: like the workers' start)."""
    engine = explainer_factory(SERIAL)
    engine.explain(explain_instances[:2])
    return engine


@pytest.fixture(scope="module")
def plain_processes(serial_engine, explain_instances):
    """``(workers, batch_size)`` -> started :class:`BareProcesses`, kept for the module and closed after it."""
    started: dict[tuple[int, int], BareProcesses] = {}

    def get(workers: int, batch_size: int) -> BareProcesses:
        key = (workers, batch_size)
        if key not in started:
            started[key] = BareProcesses(serial_engine.engine, workers, batch_size)  # closed below even if start fails
            started[key].start(explain_instances)
        return started[key]

    try:
        yield get
    finally:
        for processes in started.values():
            processes.close()


def test_backend(benchmark, request, backend_config, kernelshap_ray, workload, explain_instances,
                 explainer_factory, serial_engine, plain_processes):
    config = backend_config
    instances = explain_instances
    rounds = kernelshap_ray.options.nruns
    fields: dict = {}
    benchmark.group = "backends"
    serial = SerialRounds(serial_engine, instances)

    def time_paired_with_serial(explain, ceiling: BareProcesses | None = None, *, account_cpu: bool,
                                worker_pids: tuple[int, ...] = (), before_round=None) -> None:
        """Time ``explain()``, a serial round (then a ``ceiling`` round, if given) before each of
        its rounds; every round's values must equal serial's before its time is kept.
        ``account_cpu`` (the workers are on this machine): also account the machine's CPU per
        call by role, with ``worker_pids`` counted as workers besides our actors.
        ``before_round()``, if given, runs first in each round's untimed setup."""
        cpu_seconds: list[float] = []
        ceiling_seconds: list[float] = []

        def setup() -> None:
            if before_round is not None:
                before_round()
            serial()
            if ceiling is not None:
                t0 = time.perf_counter()
                ceiling.explain(instances)
                ceiling_seconds.append(time.perf_counter() - t0)

        machine_cpu = CpuPerRound(setup, worker_pids) if account_cpu else None

        def explain_and_check() -> np.ndarray:
            cpu0 = time.process_time()
            with kernelshap_ray.progress_visible():
                values = explain()
            cpu_seconds.append(time.process_time() - cpu0)
            assert_same_values(values, serial.values, config.id, tol=REUSE_TOLERANCE if config.reuse else 0)
            return values

        benchmark.pedantic(explain_and_check, setup=machine_cpu or setup, rounds=rounds, warmup_rounds=1,
                           iterations=1)
        fields.update(serial_seconds=min(serial.seconds), serial_rounds=serial.seconds,
                      driver_cpu_seconds=min(cpu_seconds))
        if machine_cpu is not None:
            fields.update(machine_cpu_summary(machine_cpu.finish()[1:]))  # [0]: the warm-up round
        if ceiling_seconds:
            fields.update(processes_seconds=min(ceiling_seconds), processes_rounds=ceiling_seconds)

    if config.backend == SERIAL:
        benchmark.pedantic(serial_engine.explain, args=(instances,), rounds=rounds, iterations=1)
        fields["serial_seconds"] = benchmark.stats.stats.min
    elif config.backend == PROCESSES:
        t0 = time.perf_counter()
        processes = plain_processes(config.workers, config.batch_size)
        fields["startup_seconds"] = time.perf_counter() - t0
        time_paired_with_serial(lambda: processes.explain(instances), account_cpu=True, worker_pids=processes.pids)
    else:
        cluster = request.getfixturevalue("ray_cluster")
        kernelshap_ray.require_placeable(config)
        # with reuse, new workers before every round after the first: no round reuses the values
        # an earlier round of the same instances left in the workers' caches
        explainer = FreshEachRound(lambda: explainer_factory(config), config.reuse)
        try:
            t0 = time.perf_counter()
            explainer.start()  # the pool actors / Serve replicas / Ray Data pipeline, before the clock
            fields["startup_seconds"] = time.perf_counter() - t0
            # the plain processes run here: on a remote cluster they are no ceiling for its workers
            ceiling = None if cluster.is_remote else plain_processes(config.workers, config.batch_size)
            time_paired_with_serial(lambda: explainer.explain(instances), ceiling, account_cpu=not cluster.is_remote,
                                    before_round=explainer.before_round)
        finally:
            explainer.close()
        naive_rows = len(instances) * serial_engine.nsamples_ * len(workload.background)
        fields.update(naive_rows=naive_rows, row_strategy=serial_engine.row_strategy_,
                      **explainer.counter_fields(naive_rows))

    stats = benchmark.stats.stats
    record = BenchmarkRecord(
        suite="backends", workload=workload.name,
        backend=None if config.backend == PROCESSES else config.backend,
        baseline=PROCESSES if config.backend == PROCESSES else None,
        serve_mode=config.serve_mode, workers=config.workers,
        batch_size=None if config.backend == SERIAL else config.batch_size,
        n_instances=len(instances), nsamples=serial_engine.nsamples_, exact=serial_engine.exact,
        seconds=stats.min, mean_seconds=stats.mean, nodes_used=1,
        reuse_coalitions=config.reuse if config.distributed else None, **fields,
    )
    benchmark.extra_info.update(record.to_extra_info())
