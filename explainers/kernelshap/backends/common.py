"""Helpers shared by the Ray backends: minibatching, BLAS limits, errors, reassembly.

Nothing here imports Ray at module level, so the helpers can be unit-tested and
unpickled on workers cheaply.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: the backends of ``DistributedKernelShap`` and the two modes of the Serve backend
BACKENDS = ("pool", "serve", "data")
SERVE_MODES = ("ray", "default")
#: the classes whose actors do the explaining (pool, Ray Data, Serve)
WORKER_CLASSES = ("KernelShapPoolWorker", "KernelShapDataWorker", "KernelShapReplica")


def backend_label(backend: str, serve_mode: str | None = None) -> str:
    """``pool``, ``data``, ``serial``, or ``serve-ray`` / ``serve-default`` for Serve's modes."""
    return backend if serve_mode is None else f"{backend}-{serve_mode}"


#: default of ``DistributedKernelShap(placement_timeout_s=...)``: how long the workers may wait
#: for the cluster to place them (free CPUs) before the start is a :class:`PlacementError`
DEFAULT_PLACEMENT_TIMEOUT_S = 30.0
#: once placed, how long the workers' constructors (model unpickled, libraries imported) may take
READY_TIMEOUT_S = 300.0
#: bound on asking Ray what holds the resources, for a :class:`PlacementError`'s message
HOLDERS_TIMEOUT_S = 5.0


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


class PlacementError(TimeoutError):
    """The workers could not be placed within ``placement_timeout_s``: the cluster has not
    the free resources they ask for (other actors, tasks or jobs hold them).

    The message says what was asked, what is available and, if Ray can tell, what holds it.
    Nothing of the attempt is left running.
    """


class WorkerStartError(RuntimeError):
    """A worker failed while starting: its constructor raised, most often because the model
    (predict function, background) could not be unpickled there, e.g. its module is importable
    on the driver but not on the workers. The message carries the worker's exception."""


#: a ``Type: message`` line of a traceback (the type optionally dotted)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Warning))(?:: (.*))?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(text: str) -> str:
    """The innermost ``Type: message`` line of an error text (a Ray or Serve error with the
    worker's traceback inside); Ray's own wrappers (``ray.exceptions.*``) only when nothing
    else is there; else the text's first line. At most 500 characters."""
    lines = [line.strip() for line in _ANSI.sub("", str(text)).splitlines()]
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    user = [line for line in found if not line.startswith("ray.")]
    pick = (user or found or [line for line in lines if line] or [""])[-1 if (user or found) else 0]
    return pick if len(pick) <= 500 else pick[:497] + "..."


def start_error(what: str, exc: BaseException | str) -> WorkerStartError:
    """:class:`WorkerStartError` for ``what`` (e.g. ``"pool actor kernelshap-pool-x-0"``)."""
    cause = root_cause(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")
    return WorkerStartError(
        f"{what} failed to start: {cause}. The worker unpickles the model (predict function and "
        "background): every module it needs must be importable on the workers (install it there, "
        "ship it with runtime_env py_modules, or register it with "
        "ray.cloudpickle.register_pickle_by_value)"
    )


def actor_error_text(exc: BaseException) -> str:
    """A Ray actor error in a few lines: its type and the worker's root cause."""
    return f"{type(exc).__name__}: {root_cause(str(exc))}"


def cpus_available() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def could_place(n_workers: int, num_cpus: float) -> bool:
    """True if ``n_workers`` more workers of ``num_cpus`` CPUs fit in the CPUs free right now."""
    return cpus_available() + 1e-9 >= n_workers * num_cpus


def actor_pid(actor_id_hex: str) -> int:
    """The process of an actor (0 while it waits to be placed), from the GCS; 0 if unknown."""
    from ray._private import state

    try:
        return int(state.actors(actor_id=actor_id_hex).get("Pid", 0) or 0)
    except Exception:  # noqa: BLE001 - best effort
        return 0


def resource_holders(exclude: Callable[[str, str], bool] = lambda cls, name: False,
                     timeout: float = HOLDERS_TIMEOUT_S, limit: int = 8) -> list[str]:
    """Best effort, within ``timeout`` s: the live actors that hold resources, most CPUs first,
    as ``"ClassName 'name' (pid 12): CPU 4"`` (``exclude(class_name, name)`` drops ours)."""
    rows: list[tuple[float, str]] = []

    def fetch() -> None:
        try:
            found = _holders_from_state_api(timeout)
        except Exception:  # noqa: BLE001 - the state API needs the dashboard
            try:
                found = _holders_from_gcs()
            except Exception:  # noqa: BLE001
                return
        rows.extend(found)

    thread = threading.Thread(target=fetch, name="kernelshap-holders", daemon=True)
    thread.start()
    thread.join(timeout)
    out = []
    for cls, name, pid, resources in list(rows):
        resources = {k: v for k, v in (resources or {}).items() if v and not k.startswith(("node:", "memory",
                                                                                           "object_store"))}
        if not resources or exclude(cls, name):
            continue
        label = f"{cls}" + (f" {name!r}" if name else "") + (f" (pid {pid})" if pid else "")
        out.append((-float(resources.get("CPU", 0.0)),
                    f"{label}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()))))
    out.sort()
    more = len(out) - limit
    return [text for _, text in out[:limit]] + ([f"and {more} more"] if more > 0 else [])


def _holders_from_state_api(timeout: float) -> list[tuple[str, str, int, dict]]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, timeout=max(1, int(timeout)),
                         raise_on_missing_output=False)
    return [(a.class_name, a.name or "", int(a.pid or 0), dict(a.required_resources or {})) for a in actors]


def _holders_from_gcs() -> list[tuple[str, str, int, dict]]:
    from ray._private import state
    from ray.core.generated import gcs_pb2

    accessor = state.state._connect_and_get_accessor()
    rows = []
    for raw in accessor.get_actor_table(None, "ALIVE"):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        rows.append((actor.class_name, actor.name, int(actor.pid), dict(actor.required_resources)))
    return rows


def placement_error(config: "BackendConfig", placed: int, what: str,
                    exclude: Callable[[str, str], bool] = lambda cls, name: False) -> PlacementError:
    """The :class:`PlacementError` after ``placement_timeout_s``: ``placed`` of ``config.workers``
    ``what`` (e.g. ``"pool actors"``) were placed."""
    import ray

    need = config.workers * config.num_cpus
    available = {k: round(v, 3) for k, v in sorted(ray.available_resources().items())
                 if not k.startswith("node:")}
    total = float(ray.cluster_resources().get("CPU", 0.0))
    holders = resource_holders(exclude)
    held_by = "; ".join(holders) if holders else "no actor Ray can name (tasks or other jobs may hold them)"
    return PlacementError(
        f"{config.workers} workers x {config.num_cpus:g} CPU ({need:g} CPUs) could not be placed within "
        f"placement_timeout_s={config.placement_timeout_s:g} s: {placed} of {config.workers} {what} placed. "
        f"The cluster has {cpus_available():g} of {total:g} CPUs available (ray.available_resources(): "
        f"{available}). Held by: {held_by}. Free CPUs, lower workers or num_cpus_per_worker, "
        f"or raise placement_timeout_s"
    )


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


#: the counters every worker returns with each minibatch's values, as one float64 vector: its
#: engine's model rows and, with ``reuse_coalitions``, its coalition cache's (zeros without)
WORKER_COUNTERS = ("model_rows", "hits", "misses", "entries", "bytes", "max_bytes", "full")


def engine_counters(engine: Any) -> np.ndarray:
    """``(len(WORKER_COUNTERS),)`` float64: ``engine.model_rows_`` and its ``reuse_stats``
    (``full`` as 1.0 / 0.0), all since the engine (the worker) was made."""
    reuse = engine.reuse_stats or {}
    return np.array([engine.model_rows_] + [float(reuse.get(name, 0)) for name in WORKER_COUNTERS[1:]])


def worker_id() -> str:
    """This worker's Ray actor id (pool actor, Serve replica or Ray Data map actor)."""
    import ray

    return ray.get_runtime_context().get_actor_id() or ""


def total_counters(per_worker: dict[str, dict[str, float]], reuse: bool) -> dict[str, Any]:
    """The workers' counters summed: ``model_rows`` and, if ``reuse``, ``reuse`` = hits, misses,
    hit_rate, entries, bytes, max_bytes (each summed over the caches) and full (any of them);
    ``reuse`` is None otherwise."""
    summed = {name: sum(c[name] for c in per_worker.values()) for name in WORKER_COUNTERS}
    out: dict[str, Any] = {"model_rows": int(summed["model_rows"]), "reuse": None}
    if reuse:
        looked = summed["hits"] + summed["misses"]
        out["reuse"] = dict(
            hits=int(summed["hits"]), misses=int(summed["misses"]),
            hit_rate=summed["hits"] / looked if looked else 0.0, entries=int(summed["entries"]),
            bytes=int(summed["bytes"]), max_bytes=int(summed["max_bytes"]),
            full=any(c["full"] for c in per_worker.values()),
        )
    return out


@dataclass
class Assembler:
    """Collects per-minibatch results into one ``(n, ...)`` array, in row order, and each
    worker's newest counters (:data:`WORKER_COUNTERS`)."""

    n: int
    progress: Callable[[int], None] | None = None
    _out: np.ndarray | None = None
    _seen: np.ndarray | None = None
    _counters: dict[str, np.ndarray] = field(default_factory=dict)

    def count(self, worker: str, counters: np.ndarray) -> None:
        """Keep ``worker``'s counters if they are its newest: they only grow while it lives,
        so of two the one with more rows evaluated and values looked up is the later."""
        counters = np.asarray(counters, dtype=np.float64)
        if counters.shape != (len(WORKER_COUNTERS),):
            raise RuntimeError(f"a worker returned counters of shape {counters.shape}, "
                               f"not ({len(WORKER_COUNTERS)},)")
        old = self._counters.get(worker)
        if old is None or counters[:3].sum() >= old[:3].sum():
            self._counters[worker] = counters

    def worker_counters(self) -> dict[str, dict[str, float]]:
        """Worker id -> its newest counters by name."""
        return {w: dict(zip(WORKER_COUNTERS, c.tolist())) for w, c in self._counters.items()}

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
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S  # for the workers to be placed
