"""The headline: exact KernelSHAP of the workload's instances on the cluster's CPUs.

Options: ``--workload``, ``--backends`` and ``--serve-modes`` (one benchmark per backend),
``--workers`` (the largest; default all the cluster's CPUs), ``--batch-sizes`` (the largest),
``--n-instances`` (``--study``: all 2560 Adult instances), ``--nruns``, ``--progress``,
``--placement-timeout``. Fixed: exact mode (all ``2**M - 2`` coalitions; skipped above
``EXACT_MAX_PLAYERS`` players), and each backend runs twice, with the default engine and with
``reuse_coalitions=True`` (each worker reuses the coalition values of the instances it has
explained; every timed round starts with new workers, so with empty caches).

The reference study sampled 2072 of the 4094 coalitions of Adult and needed 1737 s serially,
115-125 s on one 32-vCPU machine and 57.3 s on a two-machine Kubernetes cluster (the record
holds these as ``study_*``). Before a time is kept, the values of every ``SPOT_CHECK_EVERY``-th
instance must equal the serial engine's (bit for bit by default, within ``REUSE_TOLERANCE``
with reuse) and all of them must satisfy efficiency: the values of an instance sum to
link(f(x)) - E[link(f)] within ``EFFICIENCY_TOLERANCE``.
"""
from __future__ import annotations

import csv
from importlib import resources

import numpy as np
import pytest

from explainers.bench.factory import REUSE_TOLERANCE, FreshEachRound, assert_same_values
from explainers.bench.grid import EXACT_MAX_PLAYERS, SERIAL, exact_nsamples
from explainers.bench.records import BenchmarkRecord

#: every how many instances the values are compared with the serial engine's
SPOT_CHECK_EVERY = 40
#: efficiency holds up to the rounding of a sum of M values of order 1
EFFICIENCY_TOLERANCE = 1e-10
#: the study's workload and instance count, for which its published times are comparable
STUDY_WORKLOAD, STUDY_INSTANCES = "adult", 2560


def _study_seconds() -> dict[str, float]:
    """The study's best published time per setting (batch sizes 1, 5, 10; any worker count)."""
    best: dict[str, float] = {}
    text = resources.files("explainers").joinpath("data/reference_results.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    for row in rows:
        seconds = min(float(row[f"batch_{b}"]) for b in (1, 5, 10))
        best[row["setting"]] = min(best.get(row["setting"], np.inf), seconds)
    return best


def _link(values: np.ndarray, link: str) -> np.ndarray:
    return np.log(values / (1 - values)) if link == "logit" else values


_seconds: dict[tuple[str, bool], float] = {}


@pytest.mark.parametrize("reuse", [False, True], ids=["default", "reuse"])
def test_exact_all_instances(benchmark, request, mission_config, reuse, kernelshap_ray, workload,
                             explain_instances, explainer_factory):
    config = mission_config
    request.getfixturevalue("ray_cluster")
    kernelshap_ray.require_placeable(config)
    X = explain_instances
    nsamples = exact_nsamples(workload)
    if nsamples is None:
        pytest.skip(f"exact mode: more than {EXACT_MAX_PLAYERS} players")
    serial = explainer_factory(SERIAL, engine={"nsamples": nsamples})
    explainer = FreshEachRound(lambda: explainer_factory(config, engine={"nsamples": nsamples,
                                                                         "reuse_coalitions": reuse}), reuse)
    try:
        explainer.start()

        def explain():
            with kernelshap_ray.progress_visible():
                return explainer.explain(X)

        values = benchmark.pedantic(explain, setup=explainer.before_round, rounds=kernelshap_ray.options.nruns,
                                    iterations=1)
    finally:
        explainer.close()
    naive_rows = len(X) * serial.nsamples_ * len(workload.background)
    fields: dict = dict(naive_rows=naive_rows, **explainer.counter_fields(naive_rows))

    for i in range(0, len(X), SPOT_CHECK_EVERY):
        expected = serial.engine.explain(X[i], offset=i)
        assert_same_values(values[i:i + 1], expected, f"{config.id} instance {i}", tol=REUSE_TOLERANCE if reuse else 0)
    np.testing.assert_allclose(values.sum(axis=1), _link(workload.predict(X), workload.link) - serial.expected_value,
                               rtol=0, atol=EFFICIENCY_TOLERANCE)

    seconds = benchmark.stats.stats.mean
    _seconds[(config.id, reuse)] = seconds
    if reuse and (config.id, False) in _seconds:
        fields["ratio_to_default_engine"] = seconds / _seconds[(config.id, False)]
    if workload.name == STUDY_WORKLOAD and len(X) == STUDY_INSTANCES:
        study = _study_seconds()
        cluster_best = min(v for k, v in study.items() if k.startswith("k8s"))
        fields.update(study_serial_sampled_s=study["serial"],
                      study_best_one_machine_sampled_s=min(study["pool"], study["serve"]),
                      study_best_cluster_sampled_s=cluster_best,
                      times_faster_than_study_cluster=cluster_best / seconds)
    benchmark.group = f"mission: exact, {len(X)} instances"
    record = BenchmarkRecord(
        suite="mission", workload=workload.name, backend=config.backend, serve_mode=config.serve_mode,
        workers=config.workers, batch_size=config.batch_size, n_instances=len(X), nsamples=nsamples, exact=True,
        mean_seconds=seconds, reuse_coalitions=reuse, chunk_rows=serial.chunk_rows_,
        row_strategy=serial.row_strategy_, cpu_kernel=serial.cpu_kernel_, **fields,
    )
    benchmark.extra_info.update(record.to_extra_info())
