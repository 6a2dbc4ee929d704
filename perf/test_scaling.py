"""The reference study's scaling experiment as pytest-benchmark tests.

Options: ``--workload``, ``--backends``, ``--serve-modes``, ``--workers``, ``--batch-sizes`` (one
benchmark per combination, plus the serial baseline ``serial``, which runs first),
``--reuse-coalitions``, ``--n-instances``, ``--nsamples``, ``--nruns``, ``--progress``,
``--placement-timeout`` and the
gates ``--min-efficiency`` / ``--max-overhead-share``. Fixed: one CPU per worker, seed 0.

Each benchmark explains the first ``--n-instances`` instances ``--nruns`` times and checks every
round against the serial reference values bit for bit (``np.array_equal``; within
``REUSE_TOLERANCE`` for a ``-reuse`` configuration of ``--reuse-coalitions on|both``) inside the
timed function, so no time is recorded for a wrong answer. A ``-reuse`` configuration gets new
workers before every round after the first (untimed), so that no round reuses the coalition
values an earlier round of the same instances left in the workers' caches.

Speedups are paired in time: before each round of a distributed benchmark, the serial
engine explains the same instances in this process (one CPU) while the workers wait, and
``speedup`` = the mean of these serial rounds (``serial_seconds``; all in
``serial_rounds``) / the benchmark's mean. ``paired_efficiency`` is the median over rounds of
(serial round / the round after it) / workers: one slow round does not move it. On a local
cluster, ``machine_cpu_seconds`` and ``overhead_cpu_share`` account the machine's CPU per round
by role (``explainers.bench.machine_cpu``). The gates fail a configuration after its figures
are recorded.

    pytest perf/test_scaling.py --benchmark-autosave
    pytest perf/test_scaling.py --nodes 2 --backends pool --workers 1,2
"""
from __future__ import annotations

import time

from explainers.bench.factory import REUSE_TOLERANCE, FreshEachRound, InClusterExplainer, assert_same_values
from explainers.bench.machine_cpu import CpuPerRound, machine_cpu_summary
from explainers.bench.nodes import ActorNodeTracker
from explainers.bench.pairing import paired_efficiency
from explainers.bench.records import BenchmarkRecord


def test_scaling(
    request, benchmark, scaling_config, kernelshap_ray, workload, explain_instances, serial_reference,
    explainer_factory, serial_rounds,
):
    config = scaling_config
    explainer = FreshEachRound(lambda: explainer_factory(config), config.reuse)

    def before_round() -> None:
        explainer.before_round()  # with reuse: new workers, empty caches
        serial_rounds()

    machine_cpu = None
    if config.distributed:
        cluster = request.getfixturevalue("ray_cluster")  # only distributed configurations start Ray
        kernelshap_ray.require_placeable(config)
        if not cluster.is_remote:  # the workers are on this machine
            machine_cpu = CpuPerRound(before_round)
    benchmark.group = config.group
    X = explain_instances

    try:
        tracker = ActorNodeTracker().start() if config.distributed else None
        # workers (actors, Serve replicas, Ray Data's pipeline) come up before the clock starts,
        # as in the study
        t0 = time.perf_counter()
        explainer.start()
        startup_seconds = time.perf_counter() - t0

        def explain_and_check():
            with kernelshap_ray.progress_visible():
                values = explainer.explain(X)
            assert_same_values(values, serial_reference, config.id, tol=REUSE_TOLERANCE if config.reuse else 0)
            return values

        benchmark.pedantic(explain_and_check, setup=(machine_cpu or before_round) if config.distributed else None,
                           rounds=kernelshap_ray.options.nruns, warmup_rounds=0, iterations=1)
        machine_rounds = machine_cpu.finish() if machine_cpu is not None else []
        nodes_used = tracker.nodes_used(explainer.current) if tracker is not None else None
    finally:
        explainer.close()

    if benchmark.stats is None:  # --benchmark-disable: the values were checked once, nothing timed
        return
    stats = benchmark.stats.stats
    if not config.distributed:
        kernelshap_ray.serial_seconds = stats.mean
    paired = sum(serial_rounds.seconds) / len(serial_rounds.seconds) if serial_rounds.seconds else None
    record = BenchmarkRecord(
        suite="scaling", workload=workload.name, backend=config.backend, serve_mode=config.serve_mode,
        workers=config.workers, batch_size=config.batch_size, n_instances=len(X),
        nsamples=kernelshap_ray.nsamples, exact=kernelshap_ray.exact, mean_seconds=stats.mean,
        nodes_used=nodes_used, reuse_coalitions=config.reuse if config.distributed else None,
        serial_seconds=paired if config.distributed else None,
        serial_rounds=serial_rounds.seconds if config.distributed else None,
        startup_seconds=startup_seconds if config.distributed else None,
        paired_efficiency=(paired_efficiency(serial_rounds.seconds, stats.data, config.workers)
                           if config.distributed else None),
        in_cluster_seconds=explainer.current.seconds if isinstance(explainer.current, InClusterExplainer) else None,
        **machine_cpu_summary(machine_rounds),
    )
    benchmark.extra_info.update(record.to_extra_info())
    kernelshap_ray.check_gates(config, record)
