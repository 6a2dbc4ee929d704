"""Actor-pool backend: ``workers`` Ray actors fed ``batch_size``-row minibatches.

Results are taken as they complete (``ActorPool.get_next_unordered``) and put back
in row order by their start index. Every actor is in the pool ``TASKS_PER_ACTOR``
times, so its next minibatch is already queued on it when it finishes one, instead of
waiting a round trip through the driver. A killed actor is restarted by Ray
(``max_restarts``) and its minibatches in flight re-run (``max_task_retries``).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
from ray.util import ActorPool

from explainers.kernelshap.backends.common import (
    READY_TIMEOUT_S,
    Assembler,
    BackendConfig,
    ExplanationError,
    actor_error_text,
    actor_pid,
    could_place,
    engine_counters,
    explain_range,
    find_explanation_error,
    is_worker_death,
    limit_blas_threads,
    minibatches,
    placement_error,
    start_error,
    worker_id,
)


#: minibatches in flight per actor (Ray runs an actor's tasks one at a time, in order)
TASKS_PER_ACTOR = 2


class KernelShapPoolWorker:
    """One pool actor: holds the engine, explains ``[start, stop)`` minibatches."""

    def __init__(self, engine_box: list, num_cpus: float) -> None:
        self._limits = limit_blas_threads(num_cpus)
        self.engine = ray.get(engine_box[0])
        self.worker = worker_id()

    def explain(self, start: int, X: np.ndarray) -> tuple[int, np.ndarray, str, np.ndarray]:
        """Explain rows ``X`` (b, D) as instances ``start .. start+b-1``; returns (start, values,
        this actor's id, its engine's counters)."""
        values = explain_range(self.engine, X, start)
        return start, values, self.worker, engine_counters(self.engine)

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
        """Block until every actor has started (holds the engine).

        Raises :class:`WorkerStartError` (the actor's exception) as soon as one fails to start,
        and :class:`PlacementError` if, after ``placement_timeout_s``, some actors still wait
        for CPUs the cluster does not have free; once placed, constructors get ``READY_TIMEOUT_S``.
        """
        config = self.config
        pending = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        place_by = time.monotonic() + config.placement_timeout_s
        ready_by = place_by + READY_TIMEOUT_S
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            for ref in done:
                i = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the actor's constructor failed
                    raise start_error(f"pool actor {actor_name(config.tag, i)}", exc) from None
            if pending and time.monotonic() > place_by:
                waiting = self._unplaced(pending.values())
                if waiting and not could_place(len(waiting), config.num_cpus):
                    raise placement_error(config, config.workers - len(waiting), "pool actors",
                                          exclude=lambda cls, name: name.startswith(actor_name(config.tag, "")))
                if time.monotonic() > ready_by:
                    raise TimeoutError(f"{len(pending)} of {config.workers} pool actors were placed but not "
                                       f"ready after {READY_TIMEOUT_S:g} s more")

    def _unplaced(self, indices: Any) -> list[int]:
        """The actors among ``indices`` that have no process yet (wait to be placed)."""
        return [i for i in indices if actor_pid(self.actors[i]._actor_id.hex()) == 0]

    def explain(self, X: np.ndarray, assembler: Assembler) -> dict:
        """Explain ``X`` (n, D) in ``batch_size`` minibatches; values go to ``assembler``.

        Waits for results without a bound while the actors run (a long explanation is not an
        error), but an actor restarted after a crash that cannot be placed again for
        ``placement_timeout_s`` is a :class:`PlacementError`.
        """
        config = self.config
        pool = ActorPool([a for _ in range(TASKS_PER_ACTOR) for a in self.actors])
        for start, stop in minibatches(len(X), config.batch_size):
            pool.submit(lambda a, b: a.explain.remote(b[0], X[b[0]:b[1]]), (start, stop))
        unplaced_since: dict[int, float] = {}
        while pool.has_next():
            try:
                start, values, worker, counters = pool.get_next_unordered(timeout=config.placement_timeout_s)
            except TimeoutError:
                self._check_placed(unplaced_since)
                continue
            except Exception as exc:  # noqa: BLE001
                err = find_explanation_error(exc)
                if err is not None:
                    raise ExplanationError(err.rows, err.cause_text) from None
                if is_worker_death(exc):
                    raise self._death_error(exc) from exc
                raise
            assembler.put(slice(start, start + len(values)), values)
            assembler.count(worker, counters)
        return {}

    def _check_placed(self, unplaced_since: dict[int, float]) -> None:
        """Raise :class:`PlacementError` if an actor has waited to be placed for ``placement_timeout_s``."""
        config, now = self.config, time.monotonic()
        waiting = self._unplaced(range(len(self.actors)))
        for i in list(unplaced_since):
            if i not in waiting:
                del unplaced_since[i]
        for i in waiting:
            unplaced_since.setdefault(i, now)
        late = [i for i in waiting if now - unplaced_since[i] >= config.placement_timeout_s]
        if late and not could_place(len(late), config.num_cpus):
            raise placement_error(config, config.workers - len(waiting), "pool actors (restarted after a crash)",
                                  exclude=lambda cls, name: name.startswith(actor_name(config.tag, "")))

    def _death_error(self, exc: BaseException) -> Exception:
        """The error for an actor Ray gave up on: its start failure, or how often it was restarted."""
        actor_id = getattr(exc, "actor_id", None)
        name = next((actor_name(self.config.tag, i) for i, a in enumerate(self.actors)
                     if actor_id and a._actor_id.hex() == actor_id), "a pool actor")
        if getattr(exc, "actor_init_failed", False):
            return start_error(f"pool actor {name}", exc)
        restarts = None
        if actor_id:
            try:
                from ray._private import state

                restarts = int(state.actors(actor_id=actor_id).get("NumRestarts", 0))
            except Exception:  # noqa: BLE001 - best effort
                restarts = None
        told = f"after {restarts} restart{'s' if restarts != 1 else ''}" if restarts is not None else "for good"
        return RuntimeError(f"{name} died {told} (max_restarts={self.config.max_retries}); giving up: "
                            f"{actor_error_text(exc)}")

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
