"""Ray Serve backend: a deployment of ``workers`` replicas (one application per configuration).

``serve_mode="ray"``: one request per instance (carrying its global index), grouped
on the replica by ``@serve.batch(max_batch_size=batch_size)`` and explained
together. ``serve_mode="default"``: the client sends ``batch_size``-row minibatches
to replicas that do not batch. The application (unique name) is deleted by
``Workers.close``. Requests lost to a dying replica are re-sent (values are deterministic, and
placed by index, so nothing is lost or duplicated).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.schema import LoggingConfig

from explainers.kernelshap.backends.common import (
    READY_TIMEOUT_S,
    Assembler,
    BackendConfig,
    ExplanationError,
    WorkerLostError,
    actor_error_text,
    could_place,
    engine_counters,
    explain_indexed,
    explain_range,
    find_explanation_error,
    is_worker_death,
    limit_blas_threads,
    minibatches,
    placement_error,
    root_cause,
    start_error,
    worker_id,
)
from explainers.kernelshap.backends.serve_router import ROUTER_PATH

DEPLOYMENT_NAME = "KernelShapReplica"
BATCH_WAIT_TIMEOUT_S = 0.01
#: requests in flight per replica: every request of a call is sent at once and waits on its
#: replica (spread evenly by serve_router), not in the client's router, which would hold
#: requests back and re-probe full replicas with back-off; Serve's default of 5 would also
#: cap ``@serve.batch`` batches at 5
MAX_ONGOING_REQUESTS = 1024
#: requests go to the replicas over Serve's direct gRPC channel, not as Ray actor tasks
#: (``_by_reference=False``, what ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` turns on): with one
#: request per instance it halves the caller's CPU per request and the replica's overhead.
#: Arguments and results are plain ints and arrays, so C pickle serialises them.
GRPC_OPTIONS = dict(_by_reference=False, request_serialization="pickle", response_serialization="pickle")
#: requests or replies that could be larger go as Ray actor tasks, through the object
#: store: a replica's gRPC server takes messages of at most 4 MiB
#: (``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``), and this leaves room for pickling
GRPC_MAX_PAYLOAD_BYTES = 1 << 20
#: the replica processes' environment: Serve runs the replica's methods on the replica's own
#: event loop, the one its gRPC server answers on, instead of a second loop in a thread of its
#: own (part of what ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` turns on; that switch would also open
#: an ingress server on every replica). Every request then stays on one thread, and the
#: explanation thread shares the GIL with one loop instead of two: in ``ray`` mode at 2 workers
#: the replicas used 4-18% less CPU for the same call (ARCHITECTURE.md).
REPLICA_ENV_VARS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
#: seconds between a stopping replica's checks for requests still running (Serve's default: 2,
#: and it sleeps that long before the first check, so deleting an idle application took 2 s)
SHUTDOWN_WAIT_LOOP_S = 0.1
#: seconds a stopping replica may take before Serve kills it (Serve's default: 20). The
#: application is deleted only once its caller no longer waits on any request, and a replica
#: that never got CPUs (a :class:`PlacementError`) cannot answer the stop at all: it waited
#: the whole timeout
SHUTDOWN_TIMEOUT_S = 2.0


def request_options(rows_per_request: int, x_bytes_per_row: int, value_bytes_per_row: int) -> dict:
    """Handle options for requests of ``rows_per_request`` rows: gRPC unless a request or
    its reply could be larger than :data:`GRPC_MAX_PAYLOAD_BYTES`."""
    largest = rows_per_request * max(x_bytes_per_row, value_bytes_per_row)
    return GRPC_OPTIONS if largest <= GRPC_MAX_PAYLOAD_BYTES else {}


class KernelShapReplica:
    """A Serve replica holding the engine (model, background, operators)."""

    def __init__(self, engine_box: list, num_cpus: float, max_batch_size: int) -> None:
        self._limits = limit_blas_threads(num_cpus)
        self.engine = ray.get(engine_box[0])
        self.worker = worker_id()
        self.explain_instance.set_max_batch_size(max_batch_size)
        # one explanation at a time, in the order requests arrived (asyncio.Lock is FIFO):
        # the replica has one CPU share, two engines interleaving on the GIL are slower than
        # one after the other, and in-order completion lets the client place results early
        self._busy = asyncio.Lock()

    @serve.batch(max_batch_size=10, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def explain_instance(self, indices: list[int], rows: list[np.ndarray]
                               ) -> list[tuple[np.ndarray, str, np.ndarray]]:
        """``serve_mode="ray"``: a batch of single instances -> per instance its (M,) / (M, K)
        values, this replica's actor id and its engine's counters after the batch."""
        values = await self._in_turn(explain_indexed, self.engine, indices, np.stack(rows))
        counters = engine_counters(self.engine)
        return [(v, self.worker, counters) for v in values]

    async def explain_range(self, start: int, X: np.ndarray) -> tuple[np.ndarray, str, np.ndarray]:
        """``serve_mode="default"``: rows ``X`` (b, D) as instances ``start .. start+b-1`` ->
        their values, this replica's actor id and its engine's counters."""
        values = await self._in_turn(explain_range, self.engine, X, start)
        return values, self.worker, engine_counters(self.engine)

    async def replica_id(self) -> str:
        """Which replica answered (see :func:`wait_routable`)."""
        return serve.get_replica_context().replica_id.unique_id

    async def _in_turn(self, fn: Any, *args: Any) -> Any:
        async with self._busy:  # the event loop stays free to take requests meanwhile
            return await asyncio.to_thread(fn, *args)


def app_name(tag: str) -> str:
    return f"kernelshap-{tag}"


def ensure_serve() -> bool:
    """Start Serve (no HTTP proxy) unless it already runs; True if this call started it."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return False
    except ValueError:
        serve.start(proxy_location="Disabled")
        return True


def wait_routable(handle: Any, replicas: int, method_name: str = "replica_id", timeout: float = 60.0) -> None:
    """Block until ``handle``'s router sends requests to all ``replicas`` replicas.

    ``serve.run`` returns once the replicas run, but the handle learns of them by long
    poll, a moment later: a burst sent before would be split over the replicas it knows.
    ``method_name`` answers with the replica's ID.
    """
    method = handle.options(method_name=method_name)
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Serve handle reached {len(seen)} of {replicas} replicas in {timeout:g} s")
        seen.update(r.result() for r in [method.remote() for _ in range(replicas)])
        if len(seen) < replicas:
            time.sleep(0.05)


def _deploy(engine_ref: Any, config: BackendConfig) -> Any:
    dep = serve.deployment(KernelShapReplica).options(
        name=DEPLOYMENT_NAME,
        num_replicas=config.workers,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": config.num_cpus, "runtime_env": {"env_vars": REPLICA_ENV_VARS}},
        logging_config=LoggingConfig(enable_access_log=False),
        health_check_period_s=2,
        graceful_shutdown_wait_loop_s=SHUTDOWN_WAIT_LOOP_S,
        graceful_shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH),
    )
    app = dep.bind([engine_ref], config.num_cpus, config.batch_size)
    # not serve.run: it waits, without a bound, for the application to run
    return serve._run(app, _blocking=False, name=app_name(config.tag), route_prefix=None)


def replica_class_name(name: str) -> str:
    """The Ray actor class name of the replicas of application ``name``."""
    return f"ServeReplica:{name}:{DEPLOYMENT_NAME}"


def placed_replicas(name: str) -> int:
    """Replicas of application ``name`` that have a process (are placed), from the GCS."""
    from ray._private import state

    try:
        actors = state.actors().values()
    except Exception:  # noqa: BLE001 - best effort
        return 0
    return sum(1 for a in actors if a["ActorClassName"] == replica_class_name(name)
               and a["State"] in ("PENDING_CREATION", "ALIVE") and a["Pid"])


def _status_text(app: Any) -> str:
    """The application's and its deployments' status messages (Serve puts the replica's
    traceback there)."""
    parts = [str(app.message or "")]
    parts += [str(d.message or "") for d in getattr(app, "deployments", {}).values()]
    return "\n".join(p for p in parts if p)


def wait_running(name: str, config: BackendConfig) -> None:
    """Block until application ``name`` runs.

    :class:`WorkerStartError` with the replica's exception if it fails to deploy;
    :class:`PlacementError` if, after ``placement_timeout_s``, replicas still wait for CPUs that
    are not free; ``TimeoutError`` if placed replicas are not running ``READY_TIMEOUT_S`` later.
    """
    place_by = time.monotonic() + config.placement_timeout_s
    ready_by = place_by + READY_TIMEOUT_S
    while True:
        app = serve.status().applications.get(name)
        status = str(getattr(app, "status", "")) if app is not None else ""
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED"):
            text = _status_text(app)
            raise start_error(f"the Serve replicas of {name}", root_cause(text) if text else "DEPLOY_FAILED")
        if time.monotonic() > place_by:
            placed = placed_replicas(name)
            if placed < config.workers and not could_place(config.workers - placed, config.num_cpus):
                raise placement_error(config, placed, "Serve replicas",
                                      exclude=lambda cls, actor: cls == replica_class_name(name))
            if time.monotonic() > ready_by:
                raise TimeoutError(f"the Serve application {name} is not running after "
                                   f"{config.placement_timeout_s + READY_TIMEOUT_S:g} s ({status}): "
                                   f"{root_cause(_status_text(app)) if app is not None else 'no status'}")
        time.sleep(0.2)


class Workers:
    """A Serve application of ``config.workers`` replicas, deleted by :meth:`close`."""

    def __init__(self, engine_ref: Any, config: BackendConfig) -> None:
        self.config = config
        self.name = app_name(config.tag)
        ensure_serve()
        try:
            self.handle = _deploy(engine_ref, config)
            wait_running(self.name, config)
            wait_routable(self.handle, config.workers)
        except BaseException:
            self.close()
            raise

    def explain(self, X: np.ndarray, assembler: Assembler) -> dict:
        """Explain ``X`` (n, D); returns ``{"resent": requests re-sent after a replica died}``."""
        config = self.config
        rows = 1 if config.serve_mode == "ray" else config.batch_size
        options = request_options(rows, X.shape[1] * X.itemsize, config.value_bytes_per_row)
        if config.serve_mode == "ray":
            method = self.handle.options(method_name="explain_instance", **options)
            items: list[Any] = list(range(len(X)))

            def send(i: int) -> Any:
                return method.remote(i, X[i])

            def place(i: int, value: np.ndarray) -> None:
                assembler.put([i], np.asarray(value)[None])
        else:
            method = self.handle.options(method_name="explain_range", **options)
            items = minibatches(len(X), config.batch_size)

            def send(b: tuple[int, int]) -> Any:
                return method.remote(b[0], X[b[0]:b[1]])

            def place(b: tuple[int, int], value: np.ndarray) -> None:
                assembler.put(slice(b[0], b[1]), np.asarray(value))

        def take(item: Any, response: tuple[np.ndarray, str, np.ndarray]) -> None:
            value, worker, counters = response
            place(item, value)
            assembler.count(worker, counters)

        return {"resent": _collect(items, send, take, config.max_retries)}

    def wait_ready(self) -> None:
        """Nothing more to wait for: the constructor waited until the handle reaches every replica."""

    def close(self) -> None:
        # stop the handle's router first: its long-poll client would otherwise keep calling
        # the controller and, once Ray is shut down, auto-start a new local Ray
        handle = getattr(self, "handle", None)
        if handle is not None:
            try:
                handle.shutdown()
            except Exception:  # noqa: BLE001 - never mask the real error
                pass
        try:
            serve.delete(self.name)
        except Exception:  # noqa: BLE001 - never mask the real error
            pass


def _collect(items: list[Any], send: Any, take: Any, max_retries: int) -> int:
    """Send every item, hand each response to ``take(item, response)``, re-send the ones a
    dead replica lost.

    Returns how many requests were re-sent.
    """
    pending = {k: send(item) for k, item in enumerate(items)}
    resent = 0
    for attempt in range(max_retries + 1):
        lost: list[int] = []
        last_death: BaseException | None = None
        for k, response in pending.items():
            try:
                value = response.result()
            except Exception as exc:  # noqa: BLE001
                err = find_explanation_error(exc)
                if err is not None:
                    raise ExplanationError(err.rows, err.cause_text) from None
                if not is_worker_death(exc):
                    raise
                lost.append(k)
                last_death = exc
                continue
            take(items[k], value)
        if not lost:
            return resent
        if attempt == max_retries:
            raise WorkerLostError(
                f"{len(lost)} requests still lost after {max_retries} re-sends "
                f"({actor_error_text(last_death)})"
            )
        time.sleep(0.5 * (attempt + 1))  # let the controller replace the replica
        pending = {k: send(items[k]) for k in lost}
        resent += len(lost)
    return resent  # not reached
