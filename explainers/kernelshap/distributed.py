"""``DistributedKernelShap``: the serial engine run on Ray (pool, Serve or Data).

Every backend splits the request into pieces that the engine explains with
``offset`` = the global index of their first row, so the values are identical to
``KernelShap(...).explain(X)`` whatever the workers, batch size or completion order.
"""
from __future__ import annotations

import atexit
import math
import os
import sys
import time
import uuid
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import ray

from explainers.kernelshap.backends.common import (
    BACKENDS,
    DEFAULT_PLACEMENT_TIMEOUT_S,
    SERVE_MODES,
    Assembler,
    BackendConfig,
    ExplanationError,
    PlacementError,
    WorkerLostError,
    WorkerStartError,
    total_counters,
)
from explainers.cluster.leftovers import end_leftovers, ray_processes
from explainers.kernelshap.coalition_cache import DEFAULT_REUSE_CACHE_BYTES
from explainers.kernelshap.engine import DEFAULT_MAX_PLAN_BYTES, KernelShap
from explainers.kernelshap.threads import DEFAULT_MODEL_THREADS, cluster_cpu_kernels, cpu_kernel

#: seconds each node has to name its CPU kernel when workers start on a cluster of several
KERNEL_PROBE_TIMEOUT_S = 30.0




class CpuKernelWarning(UserWarning):
    """A node computes on another CPU kernel than the one the engine was built on."""


__all__ = [
    "DistributedKernelShap",
    "CpuKernelWarning",
    "ExplanationError",
    "WorkerLostError",
    "PlacementError",
    "WorkerStartError",
    "BACKENDS",
    "SERVE_MODES",
    "explain_in_cluster",
    "InClusterDriver",
]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class DistributedKernelShap:
    """KernelSHAP explanations computed by Ray workers.

    Parameters are those of :class:`explainers.kernelshap.engine.KernelShap` plus:

    backend: ``"pool"`` (Ray actors in a ``ActorPool``), ``"serve"`` (a Ray Serve
        deployment) or ``"data"`` (Ray Data ``map_batches`` on an actor pool).
    workers: number of actors / replicas (>= 1).
    batch_size: instances per minibatch (pool, data, Serve ``default``) or the
        ``@serve.batch`` maximum (Serve ``ray``) (>= 1).
    serve_mode: ``"ray"`` (one request per instance, batched on the replica) or
        ``"default"`` (the client sends minibatches); only used by ``backend="serve"``.
    num_cpus_per_worker: CPUs reserved per worker; BLAS threads are limited to it.
    progress: tqdm bar on explanations done; ``None`` = only when stderr is a TTY.
    placement_timeout_s: seconds (a finite number > 0, default 30) the workers may wait for
        the cluster to place them, i.e. for free CPUs, at ``start()`` or when ``explain``
        makes its workers (and for a crashed worker's replacement during a call). Past it,
        :class:`PlacementError` (a ``TimeoutError``) says how many workers x CPUs were asked,
        what is available and what holds it, and nothing of the attempt is left running.
        Workers that are placed but still starting get a further, longer bound; a worker
        whose start fails (e.g. the model does not unpickle there) is a
        :class:`WorkerStartError` with its exception at once. A call on running workers may
        take as long as the explanations take.
    chunk_rows, row_strategy, model_threads, reuse_coalitions, reuse_cache_bytes, max_plan_bytes:
        as for :class:`KernelShap`; the engine is built (its chunk size measured) here and sent
        to the workers as it is. With ``reuse_coalitions`` each worker keeps its own cache for
        as long as it lives (across the calls between ``start()`` and ``stop()``).

    Values equal the serial engine's bit for bit where the workers run on the same CPU kernel
    as this process (:func:`explainers.kernelshap.threads.cpu_kernel`). When the workers start, a node of
    another kernel is a :class:`CpuKernelWarning` naming it (values computed there may differ
    from this process's in the last bits); ``last_run["cpu_kernels"]`` lists them.

    ``explain(X)`` returns ``(n, M)`` (or ``(n, M, K)`` for K outputs), exactly what
    ``KernelShap(...).explain(X)`` returns. Each call creates its workers and removes
    them when done; ``start()`` / ``stop()`` (or ``with explainer:``) keep one set of
    workers (pool actors, Serve application) for several calls. The engine (model,
    background, operators) goes to the object store once per explainer.

    Uses the running Ray (``ray.is_initialized()``) or starts a local one sized to the
    machine, which ``close()`` (or leaving the ``with`` block, or interpreter exit)
    shuts down again; a Ray it did not start is never shut down. Serve itself (its
    controller, started without an HTTP proxy if it was not running) is cluster
    infrastructure and stays up, like Ray; every application of ours is deleted.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        background: np.ndarray,
        *,
        groups: Sequence[Sequence[int]] | None = None,
        group_names: Sequence[str] | None = None,
        link: str = "identity",
        nsamples: int | str = "auto",
        seed: int = 0,
        backend: str = "pool",
        workers: int = 2,
        batch_size: int = 10,
        serve_mode: str = "ray",
        num_cpus_per_worker: float = 1.0,
        progress: bool | None = None,
        placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S,
        chunk_rows: int | str = "auto",
        row_strategy: str = "auto",
        model_threads: int | None = DEFAULT_MODEL_THREADS,
        reuse_coalitions: bool = False,
        reuse_cache_bytes: int = DEFAULT_REUSE_CACHE_BYTES,
        max_plan_bytes: int = DEFAULT_MAX_PLAN_BYTES,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
        if serve_mode not in SERVE_MODES:
            raise ValueError(
                f"serve_mode must be one of {', '.join(map(repr, SERVE_MODES))}; got {serve_mode!r}"
            )
        self.workers = _positive_int("workers", workers)
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(num_cpus_per_worker, bool) or not isinstance(num_cpus_per_worker, (int, float)) \
                or not num_cpus_per_worker > 0:
            raise ValueError(f"num_cpus_per_worker must be a number > 0, got {num_cpus_per_worker!r}")
        if progress is not None and not isinstance(progress, bool):
            raise ValueError(f"progress must be True, False or None, got {progress!r}")
        if isinstance(placement_timeout_s, bool) or not isinstance(placement_timeout_s, (int, float, np.number)) \
                or not math.isfinite(placement_timeout_s) or not placement_timeout_s > 0:
            raise ValueError(f"placement_timeout_s must be a finite number > 0 (seconds), got {placement_timeout_s!r}")
        self.placement_timeout_s = float(placement_timeout_s)
        self.backend = backend
        self.serve_mode = serve_mode
        self.num_cpus_per_worker = float(num_cpus_per_worker)
        self.progress = progress

        # built (and its chunk size measured) here, then sent as it is: every worker computes
        # with the same chunk size, row strategy and thread count as this process would
        self.engine = KernelShap(
            predict, background, groups=groups, group_names=group_names,
            link=link, nsamples=nsamples, seed=seed, chunk_rows=chunk_rows, row_strategy=row_strategy,
            model_threads=model_threads, reuse_coalitions=reuse_coalitions,
            reuse_cache_bytes=reuse_cache_bytes, max_plan_bytes=max_plan_bytes,
        )
        self._check_serialisable()
        self._engine_ref: Any = None
        self._workers: Any = None
        self._started_ray = False
        self._cpu_kernels: dict[str, str] = {}
        #: facts of the last ``explain`` call: backend, serve_mode, workers (used), batch_size,
        #: n_instances, seconds (on ready workers), total_seconds (with worker start/stop),
        #: resent (Serve: requests re-sent after a replica died), and the workers' counters
        #: since each started: worker_counters (actor id -> model_rows, hits, misses, entries,
        #: bytes, max_bytes, full), model_rows and reuse (:attr:`reuse_stats`) summed over them
        self.last_run: dict[str, Any] = {}

    # -- properties mirrored from the engine ---------------------------------
    @property
    def expected_value(self) -> Any:
        """The engine's expected value: a float, or ``(K,)`` for K outputs."""
        return self.engine.expected_value

    @property
    def n_groups(self) -> int:
        """``M``, the number of players (groups)."""
        return self.engine.n_groups

    @property
    def group_names(self) -> list[str]:
        return self.engine.group_names

    @property
    def nsamples_(self) -> int:
        """Coalitions evaluated per instance."""
        return self.engine.nsamples_

    @property
    def exact(self) -> bool:
        return self.engine.exact

    @property
    def model_rows_(self) -> int:
        """Synthetic rows the workers' models evaluated, summed over the workers of the last
        ``explain``, each since it started (with ``start()``, over every call since)."""
        return int(self.last_run.get("model_rows", 0))

    @property
    def reuse_stats(self) -> dict[str, Any] | None:
        """With ``reuse_coalitions``: the workers' caches as of the last ``explain``, summed:
        hits, misses, hit_rate, entries, bytes, max_bytes, and full if any is; else None.
        A worker's cache lives as long as the worker, so the counts are since it started."""
        return self.last_run.get("reuse")

    # -- setup ----------------------------------------------------------------
    def _check_serialisable(self) -> None:
        """Fail now, before any Ray work, if the model cannot go to the workers."""
        from ray import cloudpickle

        try:
            cloudpickle.dumps(self.engine)
        except Exception as exc:  # noqa: BLE001 - pickling raises many types
            raise TypeError(
                "the model cannot be sent to Ray workers: pickling the predict function "
                f"(with the background) failed with {type(exc).__name__}: {exc}. Use a "
                "model and predict function that cloudpickle can serialise (no open "
                "files, locks, sockets or unpicklable C objects)."
            ) from exc

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            # address="local": a new Ray sized to this machine, even when a `ray start`
            # cluster runs here (plain ray.init() would attach to that one).
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False)
        self._started_ray = True
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the workers, release the engine; shut Ray down only if this object started it.

        Never starts a local Ray: over a ``ray://`` connection whose head died, the workers
        are gone with it and are only forgotten.
        """
        from explainers.cluster.ray_client import no_auto_init, ray_connected

        with no_auto_init():
            if ray_connected():
                self.stop()
            else:
                self._workers = None
            self._engine_ref = None
            if self._started_ray:
                self._started_ray = False
                if ray.is_initialized():
                    processes = ray_processes()
                    ray.shutdown()
                    end_leftovers(processes)

    def start(self) -> "DistributedKernelShap":
        """Create the workers now and keep them for every ``explain`` until :meth:`stop`.

        Without it each ``explain`` creates its workers and removes them when done.
        (For Ray Data the workers are a running pipeline and its actor pool.)
        """
        if self._workers is None:
            self._ensure_ray()
            self._check_resources(self.workers)
            workers = self._make_workers(self.workers)
            try:
                workers.wait_ready()
            except BaseException:
                workers.close()
                raise
            self._workers = workers
            self._check_cpu_kernels()
        return self

    def _check_cpu_kernels(self) -> None:
        """Warn if a node of the cluster computes on another CPU kernel than the engine's."""
        here = cpu_kernel()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        local = len(nodes) == 1 and nodes[0]["NodeID"] == ray.get_runtime_context().get_node_id()
        if local and here == self.engine.cpu_kernel_:
            self._cpu_kernels = {nodes[0]["NodeID"]: here}
            return
        self._cpu_kernels = cluster_cpu_kernels(KERNEL_PROBE_TIMEOUT_S)
        other = {node: k for node, k in self._cpu_kernels.items() if k != self.engine.cpu_kernel_}
        if other:
            warnings.warn(CpuKernelWarning(
                f"the engine was built on CPU kernel {self.engine.cpu_kernel_!r}, but "
                + "; ".join(f"node {node[:12]} runs {k!r}" for node, k in sorted(other.items()))
                + ": values computed there may differ from a serial run here in the last bits"
            ), stacklevel=3)

    def stop(self) -> None:
        """Remove the workers made by :meth:`start` (actors, Serve application)."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()

    def _make_workers(self, n_workers: int) -> Any:
        if self._engine_ref is None:
            self._engine_ref = ray.put(self.engine)  # the model goes to the cluster once
        config = BackendConfig(
            workers=n_workers,
            batch_size=self.batch_size,
            num_cpus=self.num_cpus_per_worker,
            serve_mode=self.serve_mode,
            tag=uuid.uuid4().hex[:10],
            value_bytes_per_row=8 * self.engine.n_groups * int(np.size(self.engine.expected_value)),
            placement_timeout_s=self.placement_timeout_s,
        )
        return _backend_module(self.backend).Workers(self._engine_ref, config)

    def __enter__(self) -> "DistributedKernelShap":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- explaining -----------------------------------------------------------
    def _show_progress(self) -> bool:
        if self.progress is not None:
            return self.progress
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def _check_resources(self, n_workers: int) -> None:
        """Refuse at once a request larger than the whole cluster (one that is larger than what is
        free now is the backends' :class:`PlacementError` after ``placement_timeout_s``)."""
        total = float(ray.cluster_resources().get("CPU", 0.0))
        need = n_workers * self.num_cpus_per_worker
        if need > total + 1e-9:
            raise ValueError(
                f"{n_workers} workers x {self.num_cpus_per_worker:g} CPUs need {need:g} CPUs, "
                f"but the Ray cluster has {total:g}: lower workers or num_cpus_per_worker"
            )

    def explain(self, X: np.ndarray, *, callback: Callable[[int], None] | None = None) -> np.ndarray:
        """SHAP values of ``X`` (n, D): ``(n, M)``, or ``(n, M, K)`` for K outputs.

        ``callback(k)`` is called on the driver each time ``k`` more instances are done.
        Raises :class:`ExplanationError` (naming the failing rows) if the model raises,
        :class:`PlacementError` if the workers it makes cannot be placed within
        ``placement_timeout_s``, :class:`WorkerStartError` if they fail to start.
        """
        X = self.engine.check_X(X)
        if len(X) == 0:
            return self.engine.explain(X)
        self._ensure_ray()
        t0 = time.perf_counter()
        if self._workers is not None:
            workers, temporary = self._workers, False
        else:
            n_workers = min(self.workers, -(-len(X) // self.batch_size))  # no idle workers
            self._check_resources(n_workers)
            workers, temporary = self._make_workers(n_workers), True
        try:
            if temporary:
                workers.wait_ready()  # bounded by placement_timeout_s, as in start()
                self._check_cpu_kernels()
            values = self._explain_on(workers, X, callback)
        finally:
            if temporary:
                workers.close()
        self.last_run["total_seconds"] = time.perf_counter() - t0  # with worker start/stop
        return values

    def _explain_on(self, workers: Any, X: np.ndarray, callback: Callable[[int], None] | None) -> np.ndarray:
        from tqdm.auto import tqdm

        label = self.backend if self.backend != "serve" else f"serve-{self.serve_mode}"
        with tqdm(total=len(X), disable=not self._show_progress(), unit="expl",
                  desc=f"KernelSHAP {label} x{self.workers}", file=sys.stderr) as bar:
            def progress(k: int) -> None:
                bar.update(k)
                if callback is not None:
                    callback(k)

            assembler = Assembler(len(X), progress=progress)
            t0 = time.perf_counter()
            info = workers.explain(X, assembler)
            values = assembler.result()
        per_worker = assembler.worker_counters()
        self.last_run = {
            "backend": self.backend,
            "serve_mode": self.serve_mode if self.backend == "serve" else None,
            "workers": workers.config.workers,
            "batch_size": self.batch_size,
            "n_instances": len(X),
            "seconds": time.perf_counter() - t0,
            "cpu_kernels": dict(self._cpu_kernels),
            "worker_counters": per_worker,
            **total_counters(per_worker, self.engine.reuse_coalitions),
            **(info or {}),
        }
        return values


def _backend_module(name: str) -> Any:
    from importlib import import_module

    return import_module(f"explainers.kernelshap.backends.{name}")


@ray.remote(num_cpus=0, max_retries=0)
def explain_in_cluster(explainer_kwargs: dict, X: np.ndarray) -> tuple[np.ndarray, float]:
    """Ray task: ``DistributedKernelShap(**explainer_kwargs).explain(X)`` inside the cluster.

    For drivers outside the cluster (a Serve ``DeploymentHandle`` does not work over
    Ray Client): the task is the driver. Use ``ray.get(explain_in_cluster.remote(kw, X))``
    -> ``(values, seconds)``, where ``seconds`` times only ``explain``.
    """
    explainer = DistributedKernelShap(**explainer_kwargs)
    try:
        t0 = time.perf_counter()
        values = explainer.explain(X)
        return values, time.perf_counter() - t0
    finally:
        explainer.close()


@ray.remote(num_cpus=0, max_restarts=0)
class InClusterDriver:
    """Actor that drives a ``DistributedKernelShap`` from inside the cluster across many calls.

    Over Ray Client (``ray://``, Kubernetes) a Serve handle does not work and the client
    link should not be timed: the client creates this actor, calls ``start()`` once (the
    workers come up outside any timing) and then ``explain(X)`` -> ``(values, seconds)``
    as often as it likes, and ``close()`` at the end.
    """

    def __init__(self, explainer_kwargs: dict) -> None:
        self.explainer = DistributedKernelShap(**explainer_kwargs)

    def start(self) -> float:
        """Start the workers; returns the seconds it took."""
        t0 = time.perf_counter()
        self.explainer.start()
        return time.perf_counter() - t0

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        values = self.explainer.explain(X)
        return values, time.perf_counter() - t0

    def last_run(self) -> dict:
        return dict(self.explainer.last_run)

    def close(self) -> None:
        self.explainer.close()
