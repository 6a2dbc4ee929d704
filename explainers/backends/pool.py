"""Actor-pool backend: ``workers`` Ray actors fed ``batch_size``-row minibatches.

Results are taken as they complete (``ActorPool.get_next_unordered``) and put back
in row order by their start index. Every actor is in the pool ``TASKS_PER_ACTOR``
times, so its next minibatch is already queued on it when it finishes one, instead of
waiting a round trip through the driver. A killed actor is restarted by Ray
(``max_restarts``) and its minibatches in flight re-run (``max_task_retries``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import ray
from ray.util import ActorPool

from explainers.backends._common import (
    Assembler,
    BackendConfig,
    ExplanationError,
    explain_range,
    find_explanation_error,
    is_worker_death,
    limit_blas_threads,
    minibatches,
)


#: minibatches in flight per actor (Ray runs an actor's tasks one at a time, in order)
TASKS_PER_ACTOR = 2


class KernelShapPoolWorker:
    """One pool actor: holds the engine, explains ``[start, stop)`` minibatches."""

    def __init__(self, engine_box: list, num_cpus: float) -> None:
        self._limits = limit_blas_threads(num_cpus)
        self.engine = ray.get(engine_box[0])

    def explain(self, start: int, X: np.ndarray) -> tuple[int, np.ndarray]:
        """Explain rows ``X`` (b, D) as instances ``start .. start+b-1``; returns (start, values)."""
        return start, explain_range(self.engine, X, start)

    def ready(self) -> bool:
        return True


def actor_name(tag: str, i: int) -> str:
    return f"kernelshap-pool-{tag}-{i}"


class Workers:
    """``config.workers`` named pool actors, alive until :meth:`close`."""

    def __init__(self, engine_ref: Any, config: BackendConfig) -> None:
        self.config = config
        cls = ray.remote(KernelShapPoolWorker)
        self.actors = [
            cls.options(
                name=actor_name(config.tag, i),
                num_cpus=config.num_cpus,
                max_restarts=config.max_retries,
                max_task_retries=config.max_retries,
            ).remote([engine_ref], config.num_cpus)
            for i in range(config.workers)
        ]

    def wait_ready(self) -> None:
        """Block until every actor has started (holds the engine)."""
        ray.get([a.ready.remote() for a in self.actors])

    def explain(self, X: np.ndarray, assembler: Assembler) -> dict:
        """Explain ``X`` (n, D) in ``batch_size`` minibatches; values go to ``assembler``."""
        config = self.config
        pool = ActorPool([a for _ in range(TASKS_PER_ACTOR) for a in self.actors])
        for start, stop in minibatches(len(X), config.batch_size):
            pool.submit(lambda a, b: a.explain.remote(b[0], X[b[0]:b[1]]), (start, stop))
        while pool.has_next():
            try:
                start, values = pool.get_next_unordered()
            except Exception as exc:  # noqa: BLE001
                err = find_explanation_error(exc)
                if err is not None:
                    raise ExplanationError(err.rows, err.cause_text) from None
                if is_worker_death(exc):
                    raise RuntimeError(
                        f"a pool actor died more than {config.max_retries} times; "
                        f"giving up ({type(exc).__name__}: {exc})"
                    ) from exc
                raise
            assembler.put(slice(start, start + len(values)), values)
        return {}

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
