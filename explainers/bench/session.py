"""The state of one pytest run: the options, the workload, the (lazily connected) cluster.

One :class:`KernelShapRaySession` per pytest config (``explainers.bench.plugin.get_session``).
Nothing here starts Ray until a test asks for the cluster, and the workload is loaded when a
benchmark needs it (or at start when ``--workload`` names one, so that a bad one is a usage
error before any test runs).
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Iterator

import numpy as np
import pytest

from explainers.bench.grid import (
    ScalingConfig,
    backends_grid,
    default_workers,
    mission_grid,
    scaling_grid,
    study_workers,
)
from explainers.bench.options import DEFAULT_N_INSTANCES, ENGINE_N_INSTANCES, PluginOptions
from explainers.bench.records import BenchmarkRecord, gate_failures
from explainers.cluster.session import ClusterSession, ray_version
from explainers.workloads.workload import DEFAULT_WORKLOAD, Workload, WorkloadError, check_instances, load_workload


class KernelShapRaySession:
    """Options, workload, cluster and the serial baseline of one run."""

    def __init__(self, config: pytest.Config, options: PluginOptions) -> None:
        self.config = config
        self.options = options
        self.cluster: ClusterSession | None = None
        self.serial_seconds: float | None = None  # mean of the serial baseline benchmark
        self.serial_reference_seconds: float | None = None  # time the reference took (once)
        self.serial_engine: Any = None  # the plugin's serial explainer, for paired serial rounds
        self.nsamples: int | None = None  # coalitions per instance of the reference engine
        self.exact: bool | None = None  # whether the reference values are exact
        self._workload: Workload | None = None
        self._last_info: dict[str, Any] | None = None  # the closed cluster's info()
        self._last_machine_info: dict[str, Any] | None = None  # and its machine_info()
        self._remote_run: Any = None  # explainers.bench.remote_run.RemoteRun of a Ray Jobs run
        self.compare_gate: Any = None  # explainers.bench.compare_gate.CompareGate of --compare-gate
        if options.compare_gate:
            from explainers.bench.compare_gate import CompareGate  # scipy: only when asked for

            self.compare_gate = CompareGate(options.compare_gate)

    # -- the workload -------------------------------------------------------------
    def workload(self) -> Workload:
        """The ``--workload`` (loaded and validated once); ``pytest.UsageError`` if it is bad."""
        if self._workload is None:
            try:
                workload = load_workload(self.options.workload)
                if self.options.n_instances is not None:
                    check_instances(workload, self.options.n_instances)
            except WorkloadError as exc:
                raise pytest.UsageError(f"--workload {self.options.workload}: {exc}") from None
            self._workload = workload
        return self._workload

    def load_workload_early(self) -> None:
        """Load a workload named on the command line or in the ini file now (the default waits)."""
        if self.options.workload != DEFAULT_WORKLOAD:
            self.workload()

    @property
    def workload_name(self) -> str:
        """The workload's name; the default's without loading it."""
        return self._workload.name if self._workload is not None else (
            "adult" if self.options.workload == DEFAULT_WORKLOAD else self.workload().name)

    def n_instances(self, default: int = DEFAULT_N_INSTANCES) -> int:
        """``--n-instances``, else all of the workload's with ``--study``, else ``default``
        (a suite's own: :data:`DEFAULT_N_INSTANCES`, or :data:`ENGINE_N_INSTANCES`)."""
        if self.options.n_instances is not None:
            return self.options.n_instances
        if self.options.study:
            return len(self.workload().X)
        return default

    def explain_instances(self, default: int = DEFAULT_N_INSTANCES) -> np.ndarray:
        """The first :meth:`n_instances` rows of the workload's ``X``: ``(n, D)`` float64."""
        X = self.workload().X
        n = self.n_instances(default)
        if n > len(X):
            raise pytest.UsageError(
                f"--n-instances {n} is not allowed: workload {self.workload_name!r} has {len(X)} instances")
        return np.ascontiguousarray(X[:n])

    # -- the cluster --------------------------------------------------------------
    def connect(self) -> ClusterSession:
        """Connect (or start) the cluster once; later calls return the same session."""
        if self.cluster is None or self.cluster.closed:
            from explainers.cluster.session import connect

            opts = self.options
            self.cluster = connect(
                opts.ray_address,
                nodes=opts.nodes,
                num_cpus=opts.ray_cpus if opts.address_mode == "local" else None,
                k8s=opts.k8s,
            )
        return self.cluster

    # -- a run in a KubeRay cluster, as a Ray Job ------------------------------------------
    def remote_run(self) -> Any:
        """The :class:`explainers.bench.remote_run.RemoteRun` of ``--ray-address k8s`` (made once)."""
        if self._remote_run is None:
            from explainers.bench.remote_run import RemoteRun

            self._remote_run = RemoteRun(self.config, self.options)
        return self._remote_run

    def remote_outcome(self) -> Any:
        """What the Ray Job brought back (:class:`explainers.bench.remote_run.RemoteOutcome`), or ``None``."""
        return None if self._remote_run is None else self._remote_run.outcome

    def close(self) -> None:
        """Close the cluster session (its one teardown path restores a scaled worker group)."""
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            try:
                self._last_info = cluster.known_info()
                if self._last_info is not None:
                    self._last_machine_info = cluster.machine_info()
            finally:
                cluster.close()

    def cluster_info(self) -> dict[str, Any] | None:
        """What the cluster is (after it connected), else ``None``."""
        if self.cluster is not None:
            return self.cluster.known_info()
        return self._last_info

    def planned_cpus(self) -> int | None:
        """CPUs a local cluster will have (known before starting it); ``None`` for attached ones."""
        if self.options.address_mode != "local":
            return None
        return self.options.ray_cpus or os.cpu_count() or 1

    def workers(self) -> list[int]:
        """``--workers``, else 1, 2, 4, ... up to the cluster's CPUs (``--study``: 1, 2, 3, ...).

        For attached clusters the default needs the CPU count, so it connects (this is
        only called while generating the distributed tests, which use the cluster anyway).
        """
        if self.options.workers is not None:
            return list(self.options.workers)
        cpus = self.planned_cpus()
        if cpus is None:
            cpus = self.connect().info()["total_cpus"]
        return study_workers(cpus) if self.options.study else default_workers(cpus)

    def scaling_configs(self) -> list[ScalingConfig]:
        """``perf/test_scaling.py``: serial, then backends x modes x batch sizes x workers."""
        opts = self.options
        return scaling_grid(opts.backends, opts.serve_modes, self.workers(), opts.batch_sizes,
                            reuse=opts.reuse_variants)

    def backend_configs(self) -> list[ScalingConfig]:
        """``perf/test_backends.py``: serial, then per worker count the plain processes and each backend."""
        opts = self.options
        return backends_grid(opts.backends, opts.serve_modes, self.workers(), opts.batch_sizes,
                             reuse=opts.reuse_variants)

    def mission_configs(self) -> list[ScalingConfig]:
        """``perf/test_mission.py``: each backend at the largest worker count and batch size."""
        opts = self.options
        return mission_grid(opts.backends, opts.serve_modes, self.workers(), opts.batch_sizes)

    def require_placeable(self, config: ScalingConfig, cpus_per_worker: float = 1.0) -> None:
        """Skip ``config`` (with the reason) if the cluster cannot place its workers.

        With ``--ray-address k8s --k8s-scale`` the worker group is scaled up instead.
        """
        if not config.distributed:
            return
        cluster = self.connect()
        info = cluster.info()
        needed = config.workers * cpus_per_worker
        if needed <= info["total_cpus"]:
            return
        if cluster.can_scale and self.options.k8s_scale:
            info = cluster.ensure_cpus(needed)
            if needed <= info["total_cpus"]:
                return
        hint = (
            " (pass --k8s-scale to grow the RayCluster's worker group)"
            if cluster.mode == "k8s" else
            f"; use --workers up to {int(info['total_cpus'] // cpus_per_worker)}"
        )
        pytest.skip(
            f"{config.id}: {config.workers} workers x {cpus_per_worker:g} CPU need {needed:g} CPUs, "
            f"the cluster has {info['total_cpus']} on {info['nodes']} node(s){hint}"
        )

    # -- progress -----------------------------------------------------------------
    @contextlib.contextmanager
    def progress_visible(self) -> Iterator[bool]:
        """With ``--progress``: pytest's output capture is suspended inside, so a progress bar
        on stderr reaches the terminal. Yields whether progress is on."""
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if not self.options.progress or capman is None:
            yield False
            return
        with capman.global_and_fixture_disabled():
            yield True

    # -- reporting ----------------------------------------------------------------
    def header_lines(self) -> list[str]:
        opts = self.options
        where = f"address {opts.ray_address}"
        if opts.address_mode == "local":
            where += f" ({opts.nodes} node{'s' if opts.nodes > 1 else ''}, {self.planned_cpus()} CPUs)"
        elif opts.address_mode == "k8s":
            where += (f" (namespace {opts.k8s.namespace}, RayCluster {opts.k8s.cluster}, "
                      f"transport {opts.k8s.transport})")
        info = self.cluster_info()
        if info is not None:
            where = (f"address {info['address_mode']} {info['address']} ({info['nodes']} nodes, "
                     f"CPUs per node {info['cpus_per_node']}, {info['total_cpus']} CPUs)")
        else:
            where += "; connected when a test needs the cluster"
        n = opts.n_instances if opts.n_instances is not None else (
            "all" if opts.study else f"{DEFAULT_N_INSTANCES} (engine suite {ENGINE_N_INSTANCES})")
        if opts.workers:
            workers = ",".join(map(str, opts.workers))
        else:
            workers = "auto (1, 2, 3, ... CPUs)" if opts.study else "auto (1, 2, 4, ... CPUs)"
        return [
            f"kernelshap-ray: ray {ray_version()}, python {platform.python_version()}, {where}",
            f"kernelshap-ray: workload={opts.workload}{' study' if opts.study else ''} n_instances={n} "
            f"nsamples={opts.nsamples} nruns={opts.nruns} "
            f"backends={','.join(opts.backends)} serve_modes={','.join(opts.serve_modes)} "
            f"batch_sizes={','.join(map(str, opts.batch_sizes))} workers={workers}"
            + (f" reuse_coalitions={opts.reuse_coalitions}" if opts.reuse_coalitions != "off" else "")
            + (" progress" if opts.progress else "")
            + (f" min_efficiency={opts.min_efficiency:g}" if opts.min_efficiency is not None else "")
            + (f" max_overhead_share={opts.max_overhead_share:g}" if opts.max_overhead_share is not None else "")
            + (f" compare_gate={opts.compare_gate}" if opts.compare_gate else ""),
        ]

    def machine_info(self) -> dict[str, Any]:
        """The Ray and workload fields of pytest-benchmark's machine info (planned values before
        connecting); for a Ray Job, the whole machine info of the cluster node it ran on."""
        outcome = self.remote_outcome()
        if outcome is not None:
            return dict(outcome.machine_info)
        out: dict[str, Any] = {"workload": self.workload_name}
        if self.cluster is not None and self.cluster.known_info() is not None:
            out.update(self.cluster.machine_info())
            return out
        if self._last_machine_info is not None:
            out.update(self._last_machine_info)
            return out
        nodes = self.options.nodes if self.options.address_mode == "local" else None
        out.update(
            ray_version=ray_version(),
            ray_address_mode=self.options.address_mode,
            ray_nodes=nodes,
            ray_cpus=self.planned_cpus(),
        )
        if self.options.address_mode == "k8s":
            out["k8s_cluster"] = self.options.k8s.cluster
        return out

    # -- gates --------------------------------------------------------------------
    def check_gates(self, config: ScalingConfig, record: BenchmarkRecord) -> None:
        """Fail the benchmark (``pytest.fail``) if it misses ``--min-efficiency`` or ``--max-overhead-share``.

        Called after the record is saved in ``extra_info``, so the saved run keeps the figures
        that failed. A gate is left out without its option, for the baselines, and without its
        figure (``paired_efficiency`` needs serial rounds; ``overhead_cpu_share`` a local cluster).
        """
        if not config.distributed:
            return
        failures = gate_failures(record, min_efficiency=self.options.min_efficiency,
                                 max_overhead_share=self.options.max_overhead_share, workers=config.workers)
        if failures:
            pytest.fail(f"{config.id}: " + "; ".join(failures), pytrace=False)
