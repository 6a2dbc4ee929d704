"""Ray Data backend: ``map_batches`` over instance indices with a fixed actor pool.

The dataset holds only the global indices ``0 .. n-1`` (one block per minibatch); the rows ``X`` and the
engine live in the object store once and each map actor fetches them when it
starts. Output batches carry their indices, so values are placed back in input
order whatever order Ray Data yields them (``preserve_order`` is also set).

Ray Data keeps no actors between executions (ray-project/ray#46479), so every call
starts its actor pool: fresh worker processes that import Ray Data and the model's
library. Each output batch carries the wall-clock time its actor became ready, and
``explain`` reports how long after the call's start the last one was
(``actor_pool_start_seconds``).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from explainers.backends._common import (
    Assembler,
    BackendConfig,
    ExplanationError,
    explain_indexed,
    find_explanation_error,
    limit_blas_threads,
    minibatches,
)


class KernelShapDataWorker:
    """Callable class for ``map_batches``: ``{"data": (b,) indices}`` -> ``{"index", "values", "error"}``."""

    def __init__(self, engine_box: list, X_box: list, num_cpus: float) -> None:
        self._limits = limit_blas_threads(num_cpus)
        self.engine = ray.get(engine_box[0])
        self.X = ray.get(X_box[0])
        self.ready_at = time.time()  # wall clock: compared with the driver's

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = np.asarray(batch["data"], dtype=np.int64)
        error = ""
        try:
            values = explain_indexed(self.engine, idx.tolist(), self.X[idx])
        except ExplanationError as exc:
            # Returned as data: Ray Data re-raises UDF errors without their cause, which
            # would lose the rows; the driver raises it and stops the pipeline.
            error = exc.cause_text
            shape = (len(idx), self.engine.n_groups) + np.shape(self.engine.expected_value)
            values = np.zeros(shape)
        return {"index": idx, "values": values, "error": np.array([error] * len(idx), dtype=object),
                "ready_at": np.full(len(idx), self.ready_at)}


class Workers:
    """Ray Data keeps no actors between executions: each ``explain`` runs a pipeline
    whose actor pool starts with it and ends with its iteration."""

    def __init__(self, engine_ref: Any, config: BackendConfig) -> None:
        self.engine_ref, self.config = engine_ref, config

    def explain(self, X: np.ndarray, assembler: Assembler) -> dict:
        """Explain ``X`` (n, D); returns ``{"actor_pool_start_seconds": float}``."""
        return run(self.engine_ref, X, self.config, assembler)

    def wait_ready(self) -> None:
        """Nothing to wait for (see the class docstring)."""

    def close(self) -> None:
        pass


def run(engine_ref: Any, X: np.ndarray, config: BackendConfig, assembler: Assembler) -> dict:
    """Explain ``X`` (n, D) with Ray Data; the actor pool ends with the iteration.

    Returns ``{"actor_pool_start_seconds": s}``: from the call's start until the last actor
    that explained a batch was ready.
    """
    from ray.data import ActorPoolStrategy, DataContext

    started_at = time.time()
    last_ready = started_at
    n = len(X)
    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    try:
        # Datasets copy the current context when created: set, build, restore.
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        # One in-memory block per minibatch: no read tasks competing with the actors
        # for CPUs, and the blocks spread evenly over the pool.
        ds = ray.data.from_numpy([np.arange(s, t) for s, t in minibatches(n, config.batch_size)])
        ds = ds.map_batches(
            KernelShapDataWorker,
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=min(config.workers, -(-n // config.batch_size))),
            num_cpus=config.num_cpus,
            fn_constructor_args=([engine_ref], [ray.put(X)], config.num_cpus),
        )
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for out in batches:
            failed = [i for i, e in zip(out["index"].tolist(), out["error"]) if e]
            if failed:
                raise ExplanationError(failed, str(out["error"][out["error"] != ""][0]))
            assembler.put(out["index"].tolist(), out["values"])
            last_ready = max(last_ready, float(np.max(out["ready_at"])))
    except ExplanationError:
        raise
    except Exception as exc:  # noqa: BLE001
        err = find_explanation_error(exc)
        if err is not None:
            raise ExplanationError(err.rows, err.cause_text) from None
        raise
    finally:
        getattr(batches, "close", lambda: None)()  # stops the executor (and its actor pool) when we leave early
    return {"actor_pool_start_seconds": last_ready - started_at}
