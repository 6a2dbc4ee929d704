"""Helpers shared by the Ray backends: minibatching, BLAS limits, errors, reassembly.

Nothing here imports Ray at module level, so the helpers can be unit-tested and
unpickled on workers cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np


class ExplanationError(RuntimeError):
    """A model (or the engine) raised while explaining some instances.

    ``rows`` are the global instance indices (positions in the ``X`` given to
    ``DistributedKernelShap.explain``) of the minibatch that failed.
    """

    def __init__(self, rows: Sequence[int], cause: str) -> None:
        self.rows = [int(r) for r in rows]
        self.cause_text = cause
        super().__init__(f"explaining rows {describe_rows(self.rows)} failed: {cause}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep the rows when pickled across Ray
        return (type(self), (self.rows, self.cause_text))


class WorkerLostError(RuntimeError):
    """Workers kept dying: some rows could not be explained after all retries."""


def describe_rows(rows: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (contiguous runs, inclusive)."""
    runs = contiguous_runs(sorted(set(int(r) for r in rows)))
    return ", ".join(f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in runs) or "(none)"


def minibatches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Split ``n`` rows into ``[start, stop)`` ranges of at most ``batch_size`` rows."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def contiguous_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive integers in the (already ordered) ``indices`` as ``[start, stop)``."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        i = int(i)
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def limit_blas_threads(num_cpus: float) -> Any:
    """Limit BLAS/OpenMP threads of this process to its CPU share (at least 1).

    Returns the threadpoolctl limiter (keep it alive; the limit stays until
    ``restore_original_limits`` is called on it).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(num_cpus)))


def explain_range(engine: Any, X: np.ndarray, start: int) -> np.ndarray:
    """Explain rows ``X`` (n, D) as global instances ``start .. start+n-1``.

    Returns the engine's ``(n, M)`` or ``(n, M, K)`` array; any exception is
    re-raised as :class:`ExplanationError` naming the global rows.
    """
    try:
        return np.asarray(engine.explain(X, offset=start))
    except Exception as exc:  # noqa: BLE001 - rethrown with the rows that failed
        raise ExplanationError(range(start, start + len(X)), f"{type(exc).__name__}: {exc}") from None


def explain_indexed(engine: Any, indices: Sequence[int], X: np.ndarray) -> np.ndarray:
    """Explain rows ``X`` (n, D) whose global indices are ``indices`` (any order).

    Consecutive runs of indices go to the engine as one call each (with
    ``offset`` = first index of the run), so the values equal a serial run.
    Returns values in the order of ``indices``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    if len(np.unique(sorted_idx)) != len(sorted_idx):
        raise ValueError("duplicate instance indices in one batch")
    pieces = []
    pos = 0
    try:
        for start, stop in contiguous_runs(sorted_idx.tolist()):
            k = stop - start
            pieces.append(np.asarray(engine.explain(X[order[pos:pos + k]], offset=start)))
            pos += k
    except Exception as exc:  # noqa: BLE001
        raise ExplanationError(sorted_idx.tolist(), f"{type(exc).__name__}: {exc}") from None
    values = np.concatenate(pieces, axis=0)
    out = np.empty_like(values)
    out[order] = values
    return out


@dataclass
class Assembler:
    """Collects per-minibatch results into one ``(n, ...)`` array, in row order."""

    n: int
    progress: Callable[[int], None] | None = None
    _out: np.ndarray | None = None
    _seen: np.ndarray | None = None

    def put(self, indices: Iterable[int] | slice, values: np.ndarray) -> None:
        values = np.asarray(values)
        if self._out is None:
            self._out = np.empty((self.n,) + values.shape[1:], dtype=values.dtype)
            self._seen = np.zeros(self.n, dtype=bool)
        idx = np.arange(self.n)[indices] if isinstance(indices, slice) else np.asarray(list(indices))
        if len(idx) != len(values):
            raise RuntimeError(f"{len(values)} values returned for {len(idx)} rows")
        new = int((~self._seen[idx]).sum())
        self._out[idx] = values
        self._seen[idx] = True
        if self.progress is not None and new:
            self.progress(new)

    def result(self) -> np.ndarray:
        if self._out is None or not self._seen.all():
            missing = np.flatnonzero(~self._seen) if self._seen is not None else range(self.n)
            raise WorkerLostError(f"no values for rows {describe_rows(list(missing))}")
        return self._out


def find_explanation_error(exc: BaseException) -> ExplanationError | None:
    """The :class:`ExplanationError` inside a Ray/Serve/Data exception chain, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ExplanationError):
            inner = getattr(e, "cause", None)  # Ray's RayTaskError(ExplanationError) wrapper
            if isinstance(inner, ExplanationError) and inner is not e:
                return inner
            if hasattr(e, "rows"):
                return e
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return None


def is_worker_death(exc: BaseException) -> bool:
    """True for errors that mean the worker process/actor died (retryable)."""
    import ray.exceptions as rex

    death = tuple(
        getattr(rex, name)
        for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                     "WorkerCrashedError", "NodeDiedError", "ObjectLostError")
        if hasattr(rex, name)
    )
    return isinstance(exc, death) and find_explanation_error(exc) is None


@dataclass(frozen=True)
class BackendConfig:
    """What every backend needs to know besides the engine and the rows."""

    workers: int
    batch_size: int
    num_cpus: float
    serve_mode: str
    tag: str  # unique per explain call: names actors / the Serve application
    max_retries: int = 3  # attempts after a worker dies, per minibatch
    value_bytes_per_row: int = 0  # size of one instance's values, (M,) or (M, K) float64
