"""The explainers a benchmark times, built for the session's workload and options.

``ExplainerFactory(session)(config)`` gives ``KernelShap`` (wrapped as :class:`SerialExplainer`)
for the serial baseline, ``DistributedKernelShap`` for a distributed configuration on a local
or ``auto`` cluster, and an :class:`InClusterExplainer` on a remote one (``ray://``, ``k8s``).
Every result has ``explain(X)`` (``(n, D)`` -> ``(n, M)`` or ``(n, M, K)``) and may have
``start()`` and ``close()``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from explainers.bench.grid import ScalingConfig
from explainers.cluster.ray_client import connection_guard, teardown_call

if TYPE_CHECKING:  # pragma: no cover
    from explainers.bench.session import KernelShapRaySession

#: seconds the in-cluster driver actor may take to remove its workers
DRIVER_CLOSE_TIMEOUT_S = 60.0
#: largest difference allowed between a backend's values and serial when coalition values are
#: reused across instances (which instance computes a value first can change its last bit)
REUSE_TOLERANCE = 1e-12


class FreshEachRound:
    """A configuration's explainer that, with ``reuse_coalitions``, is built and started anew
    before every timed round after the first (:meth:`before_round`, called from the
    benchmark's untimed ``setup``).

    A worker's coalition cache lives as long as the worker, so a round after the first would
    explain the same instances with the values the first round left: a warm cache, not the cost
    of the work. ``build()`` returns an explainer with ``explain(X)`` and maybe ``start()`` and
    ``close()``; without reuse the one explainer serves every round.
    """

    def __init__(self, build: Callable[[], Any], reuse: bool) -> None:
        self.build, self.reuse = build, reuse
        self.current = build()
        self._calls = 0  # explain calls of the current explainer

    def start(self) -> None:
        """Start the current explainer's workers (before the clock, as the study did)."""
        start = getattr(self.current, "start", None)
        if callable(start):
            start()

    def before_round(self) -> None:
        """With reuse, once the current explainer has explained: close it, build and start another."""
        if self.reuse and self._calls:
            close_explainer(self.current)
            self.current = self.build()
            self._calls = 0
            self.start()

    def explain(self, X: Any) -> Any:
        self._calls += 1
        return self.current.explain(X)

    def counter_fields(self, naive_rows: int) -> dict[str, float]:
        """Record fields from the current explainer's workers, per call: ``model_rows_per_naive``
        (the rows the models evaluated / ``naive_rows``, the call's coalitions x background rows)
        and, with reuse, ``reuse_hit_rate`` and ``reuse_cache_mb`` (their caches summed). Without
        reuse one set of workers explains every round, and each round evaluates the same rows.
        Empty for an explainer whose workers count nothing (the plain processes)."""
        rows = getattr(self.current, "model_rows_", None)
        if not rows or not self._calls or not naive_rows:
            return {}
        out = {"model_rows_per_naive": rows / self._calls / naive_rows}
        stats = getattr(self.current, "reuse_stats", None)
        if stats is not None:
            out.update(reuse_hit_rate=stats["hit_rate"], reuse_cache_mb=stats["bytes"] / 2**20)
        return out

    def close(self) -> None:
        close_explainer(self.current)


def assert_same_values(values: Any, reference: np.ndarray, what: str, tol: float = 0.0) -> None:
    """``AssertionError`` unless ``values`` has the reference's shape and equals it.

    ``tol=0``: bit for bit (``np.array_equal``); otherwise ``max|diff| <= tol``.
    """
    values = np.asarray(values)
    assert values.shape == reference.shape, (
        f"{what}: values have shape {values.shape}, the serial reference {reference.shape}"
    )
    if tol == 0:
        if not np.array_equal(values, reference):
            diff = float(np.max(np.abs(values - reference)))
            raise AssertionError(f"{what}: values are not identical to the serial reference (max diff {diff:.3g})")
        return
    diff = float(np.max(np.abs(values - reference))) if values.size else 0.0
    assert diff <= tol, f"{what}: values differ from the serial reference by {diff:.3g} (> {tol:g})"


def close_explainer(explainer: Any) -> None:
    """Call ``explainer.close()`` if it has one."""
    close = getattr(explainer, "close", None)
    if callable(close):
        close()


class ExplainerFactory:
    """Builds the explainer of a configuration for the session's workload.

    ``factory(config)`` (a :class:`ScalingConfig`) or ``factory("pool", workers=2,
    batch_size=5)``; ``engine`` keyword arguments (``nsamples``, ``reuse_coalitions``, ...)
    override the session's.
    """

    def __init__(self, session: "KernelShapRaySession") -> None:
        self.session = session

    def engine_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of ``KernelShap`` for the session's workload and ``--nsamples``."""
        w = self.session.workload()
        kwargs = dict(
            predict=w.predict, background=w.background, groups=w.groups, group_names=w.group_names,
            link=w.link, nsamples=self.session.options.nsamples, seed=0,
        )
        kwargs.update(overrides)
        return kwargs

    def kwargs(self, config: ScalingConfig, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of ``DistributedKernelShap`` for ``config``."""
        return dict(
            self.engine_kwargs(**overrides), backend=config.backend, workers=config.workers,
            batch_size=config.batch_size, serve_mode=config.serve_mode or "ray",
            num_cpus_per_worker=1.0, progress=self.session.options.progress,
            placement_timeout_s=self.session.options.placement_timeout_s,
        )

    def __call__(self, config: ScalingConfig | str = "serial", *, engine: dict[str, Any] | None = None,
                 **config_fields: Any) -> Any:
        if isinstance(config, str):
            config = ScalingConfig(config, **config_fields)
        overrides = {"reuse_coalitions": config.reuse, **(engine or {})}
        if not config.distributed:
            from explainers.kernelshap.engine import KernelShap

            return SerialExplainer(KernelShap(**self.engine_kwargs(**overrides)))
        cluster = self.session.connect()
        if cluster.is_remote:
            return InClusterExplainer(self.kwargs(config, **overrides), cluster.address)
        from explainers.kernelshap.distributed import DistributedKernelShap

        return DistributedKernelShap(**self.kwargs(config, **overrides))


class SerialExplainer:
    """The serial baseline: the engine on one core (BLAS limited to one thread, as in each
    Ray worker), so that speedup = serial time / time on ``workers`` CPUs."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def explain(self, X: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return self.engine.explain(X)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


class InClusterExplainer:
    """``explain(X)`` through an :class:`explainers.kernelshap.distributed.InClusterDriver` actor:
    the backend runs inside the cluster (Serve handles do not work over Ray Client), its
    workers start once in :meth:`start`, and ``seconds`` lists the in-cluster time of each call
    (the benchmark also times the client round trip).
    """

    def __init__(self, explainer_kwargs: dict[str, Any], address: str) -> None:
        self.explainer_kwargs = explainer_kwargs
        self.address = address
        self.seconds: list[float] = []
        self._driver: Any = None

    def start(self) -> "InClusterExplainer":
        import ray

        from explainers.kernelshap.distributed import InClusterDriver

        if self._driver is None:
            with connection_guard(self.address):
                self._driver = InClusterDriver.remote(self.explainer_kwargs)
                ray.get(self._driver.start.remote())
        return self

    def explain(self, X: np.ndarray) -> np.ndarray:
        import ray

        self.start()
        with connection_guard(self.address):
            values, seconds = ray.get(self._driver.explain.remote(np.asarray(X)))
        self.seconds.append(float(seconds))
        return values

    def close(self) -> None:
        import ray

        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                teardown_call(lambda: ray.get(driver.close.remote(), timeout=DRIVER_CLOSE_TIMEOUT_S))
            finally:
                teardown_call(ray.kill, driver)
