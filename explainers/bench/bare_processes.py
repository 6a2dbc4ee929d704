"""The machine's own ceiling for the backends: the same minibatches on plain processes, no Ray.

``BareProcesses(engine, workers, batch_size)`` explains ``X`` with ``workers`` spawned
processes (``concurrent.futures``), each holding a copy of the engine with BLAS limited
to one thread, taking the next ``batch_size``-row minibatch when free (the executor keeps
one more queued, so a process finds its next minibatch waiting). What
it reaches over serial on a given machine, in the same run, is what the Ray backends can
hope for there: two cores that share caches and memory bandwidth, and a host's other
tenants, do not make two processes twice as fast as one.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, wait
from typing import Any

import numpy as np

_engine: Any = None
_limits: Any = None


def _load(engine_bytes: bytes) -> None:
    global _engine, _limits
    import pickle

    from explainers.kernelshap.backends.common import limit_blas_threads

    _limits = limit_blas_threads(1)
    _engine = pickle.loads(engine_bytes)


def _explain(start: int, X: np.ndarray) -> tuple[int, np.ndarray]:
    return start, _engine.explain(X, offset=start)


class BareProcesses:
    """``workers`` processes explaining ``batch_size``-row minibatches; :meth:`close` ends them.

    ``explain(X)``: ``X`` (n, D) -> values (n, M[, K]), identical to ``engine.explain(X)``.
    """

    def __init__(self, engine: Any, workers: int, batch_size: int) -> None:
        from ray import cloudpickle  # the same pickling as the Ray backends' engine

        self.workers, self.batch_size = workers, batch_size
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_load, initargs=(cloudpickle.dumps(engine),))

    def start(self, X: np.ndarray) -> "BareProcesses":
        """Start every process and let each explain one row (imports, first BLAS calls)."""
        wait([self._pool.submit(_explain, 0, X[:1]) for _ in range(self.workers)])
        return self

    @property
    def pids(self) -> tuple[int, ...]:
        """The processes' IDs (once started)."""
        return tuple(self._pool._processes or ())  # the executor keeps no public list

    def explain(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n, D) -> values (n, M[, K]); a worker's exception is raised here."""
        futures = [self._pool.submit(_explain, s, X[s:s + self.batch_size])
                   for s in range(0, len(X), self.batch_size)]
        pieces = dict(f.result() for f in futures)
        return np.concatenate([pieces[s] for s in sorted(pieces)], axis=0)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BareProcesses":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
