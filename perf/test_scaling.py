"""The reference study's scaling experiment as pytest-benchmark tests.

One benchmark per (backend, Serve mode, workers, batch size) from the plugin's options
(``--backends``, ``--serve-modes``, ``--workers``, ``--batch-sizes``), plus the serial
baseline ``serial``, which the plugin runs first. Each explains the first
``--n-instances`` Adult instances ``--nruns`` times and checks every round against the
serial reference values: a round that differs by more than 1e-12 fails inside the timed
function, so no time is recorded for a wrong answer.

Speedups are paired in time: before each round of a distributed benchmark, the serial
engine explains the same instances in this process (one CPU) while the workers wait, and
``speedup`` = the mean of these serial rounds (``serial_seconds``; all in
``serial_rounds``) / the benchmark's mean. A shared machine's speed drifts over a run; a
baseline timed once, at the start, would credit or penalise whichever configuration ran
in a fast or slow minute. ``paired_efficiency`` is the median over rounds of (serial
round / the round after it) / workers: one slow round does not move it.
On a local cluster, ``machine_cpu_seconds`` and ``overhead_cpu_share`` account the
machine's CPU per round by role (``explainers.bench.machine_cpu``). Two CI gates fail a
configuration after its figures are recorded: ``--min-efficiency F``, whose
``paired_efficiency`` is below ``F``, and ``--max-overhead-share F``, whose
``overhead_cpu_share`` is above ``F``.

    pytest perf/ --benchmark-autosave
    pytest perf/ --ray-address local --nodes 2 --backends pool --workers 1,2
"""
from __future__ import annotations

import time

import pytest

from explainers.bench.machine_cpu import CpuPerRound, machine_cpu_summary
from explainers.bench.plugin import (
    ActorNodeTracker,
    InClusterExplainer,
    assert_same_values,
    close_explainer,
    get_session,
    paired_efficiency,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scaling_config" in metafunc.fixturenames:
        configs = get_session(metafunc.config).scaling_configs()
        metafunc.parametrize("scaling_config", configs, ids=[c.id for c in configs])


def test_scaling(
    request, benchmark, scaling_config, kernelshap_ray, explain_instances, serial_reference, explainer_factory,
    serial_rounds,
):
    config = scaling_config
    machine_cpu = None
    if config.distributed:
        cluster = request.getfixturevalue("ray_cluster")  # only distributed configurations start Ray
        kernelshap_ray.require_placeable(config)
        if not cluster.is_remote:  # the workers are on this machine
            machine_cpu = CpuPerRound(serial_rounds)
    benchmark.group = config.group
    X = explain_instances

    explainer = explainer_factory(config)
    try:
        tracker = ActorNodeTracker().start() if config.distributed else None
        # workers (actors, Serve replicas, Ray Data's pipeline) come up before the clock starts,
        # as in the study
        start = getattr(explainer, "start", None)
        t0 = time.perf_counter()
        if callable(start):
            start()
        startup_seconds = time.perf_counter() - t0

        def explain_and_check():
            values = explainer.explain(X)
            assert_same_values(values, serial_reference, config.id)
            return values

        benchmark.pedantic(explain_and_check, setup=(machine_cpu or serial_rounds) if config.distributed else None,
                           rounds=kernelshap_ray.options.nruns, warmup_rounds=0, iterations=1)
        machine_rounds = machine_cpu.finish() if machine_cpu is not None else []
        nodes_used = tracker.nodes_used(explainer) if tracker is not None else None
    finally:
        close_explainer(explainer)

    if benchmark.stats is None:  # --benchmark-disable: the values were checked once, nothing timed
        return
    mean = benchmark.stats.stats.mean
    paired = sum(serial_rounds.seconds) / len(serial_rounds.seconds) if serial_rounds.seconds else None
    if not config.distributed:
        kernelshap_ray.serial_seconds = mean
    benchmark.extra_info.update(
        kernelshap_ray.extra_info(
            config, mean, nsamples=kernelshap_ray.nsamples, exact=kernelshap_ray.exact, nodes_used=nodes_used,
            serial_seconds=paired,
        )
    )
    if config.distributed:
        benchmark.extra_info.update(startup_seconds=startup_seconds, serial_seconds=paired,
                                    serial_rounds=serial_rounds.seconds,
                                    paired_efficiency=paired_efficiency(serial_rounds.seconds,
                                                                        benchmark.stats.stats.data, config.workers))
    benchmark.extra_info.update(machine_cpu_summary(machine_rounds))
    if isinstance(explainer, InClusterExplainer):
        benchmark.extra_info["in_cluster_seconds"] = explainer.seconds
    kernelshap_ray.check_gates(config, benchmark.extra_info)
